from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LayoutRequest(_message.Message):
    __slots__ = ("protocol", "client_software")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SOFTWARE_FIELD_NUMBER: _ClassVar[int]
    protocol: int
    client_software: str
    def __init__(self, protocol: _Optional[int] = ..., client_software: _Optional[str] = ...) -> None: ...

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
    def __init__(self, protocol: _Optional[int] = ..., model: _Optional[str] = ..., layout_json: _Optional[str] = ..., max_request_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class KeyChunk(_message.Message):
    __slots__ = ("format", "name", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: str
    name: str
    data: bytes
    def __init__(self, format: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "key_bytes", "budget")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    key_bytes: int
    budget: Budget
    def __init__(self, session_id: _Optional[str] = ..., key_bytes: _Optional[int] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

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
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[int] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., compute_s: _Optional[float] = ...) -> None: ...

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
    def __init__(self, client: _Optional[str] = ..., limit: _Optional[int] = ..., used: _Optional[int] = ..., rate_per_minute: _Optional[float] = ...) -> None: ...
