from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message

DESCRIPTOR: _descriptor.FileDescriptor

class LayoutRequest(_message.Message):
    __slots__ = ("protocol", "client_software")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    client_software: str
    def __init__(self, protocol: int | None = ..., client_software: str | None = ...) -> None: ...

class LayoutReply(_message.Message):
    __slots__ = ("protocol", "model", "layout_json", "max_request_bytes", "chunk_bytes", "budget")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_JSON_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    model: str
    layout_json: str
    max_request_bytes: int
    chunk_bytes: int
    budget: Budget
    def __init__(self, protocol: int | None = ..., model: str | None = ..., layout_json: str | None = ..., max_request_bytes: int | None = ..., chunk_bytes: int | None = ..., budget: Budget | _Mapping | None = ...) -> None: ...

class KeyChunk(_message.Message):
    __slots__ = ("format", "name", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: str
    name: str
    data: bytes
    def __init__(self, format: str | None = ..., name: str | None = ..., data: bytes | None = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "key_bytes", "budget")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    key_bytes: int
    budget: Budget
    def __init__(self, session_id: str | None = ..., key_bytes: int | None = ..., budget: Budget | _Mapping | None = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: str | None = ...) -> None: ...

class CiphertextChunk(_message.Message):
    __slots__ = ("session_id", "request_id", "index", "data", "compute_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: int
    index: int
    data: bytes
    compute_s: float
    def __init__(self, session_id: str | None = ..., request_id: int | None = ..., index: int | None = ..., data: bytes | None = ..., compute_s: float | None = ...) -> None: ...

class BudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Budget(_message.Message):
    __slots__ = ("client", "limit", "used", "rate_per_minute")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    client: str
    limit: int
    used: int
    rate_per_minute: float
    def __init__(self, client: str | None = ..., limit: int | None = ..., used: int | None = ..., rate_per_minute: float | None = ...) -> None: ...
