"""GossipSub's RPC (libp2p pubsub ``rpc.proto``), built and parsed by hand with ``core.protobuf``.

An RPC is a sequence of top-level fields: subscriptions (1), published messages (2) and control (3). Because
repeated fields concatenate and a repeated embedded message merges, the concatenation of two RPCs' bytes is
one RPC holding both: ``GossipSub`` queues each peer's outgoing pieces as ready-made top-level fields
(``subscription``, ``publish``, ``control``) and sends whatever has gathered as one frame.

Parsing trusts no declared size (``core.protobuf.fields``). Counts are bounded the way go-libp2p bounds them:
subscriptions, control entries and message ids beyond their limits are ignored, not an error, since a sender
may join several queued pieces into one frame. Unknown fields are skipped, as protobuf requires (py-libp2p
sends ``senderRecord``, field 4, which Flair does not use).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.errors import IntegrityError
from ..core.protobuf import LENGTH_DELIMITED, Buffer, bytes_field, fields, int_field, key, varint

MAX_RPC = 1 << 20  # bytes in one RPC frame, as py-libp2p and go-libp2p
MAX_TOPICS = 16  # topics one message may name
MAX_SUBSCRIPTIONS = 1024  # subscription changes taken from one RPC
MAX_IDS = 5000  # message ids taken from the IHAVEs and IWANTs of one RPC (go-libp2p's MaxIHaveLength)
MAX_CONTROL = 1024  # GRAFT, PRUNE, IHAVE and IWANT entries taken from one RPC
MAX_TOPIC_BYTES = 1024
MAX_ID_BYTES = 128
SIGNING_PREFIX = b"libp2p-pubsub:"


@dataclass(frozen=True)
class Message:
    """A published message: ``origin`` is the publisher's peer id (bytes), ``seqno`` 8 bytes it chose; the
    message id is their concatenation (the spec's default)."""

    origin: bytes
    data: bytes
    seqno: bytes
    topics: tuple[str, ...]
    signature: bytes = b""
    key: bytes = b""

    @property
    def id(self) -> bytes:
        return self.origin + self.seqno

    def signed_part(self) -> bytes:
        """What the origin signs: ``SIGNING_PREFIX`` + the message without signature and key."""
        body = bytes_field(1, self.origin) + bytes_field(2, self.data) + bytes_field(3, self.seqno)
        return SIGNING_PREFIX + body + b"".join(bytes_field(4, t.encode()) for t in self.topics)

    def encode(self) -> bytes:
        body = self.signed_part()[len(SIGNING_PREFIX):] + bytes_field(5, self.signature)
        return body + bytes_field(6, self.key) if self.key else body


@dataclass
class Rpc:
    """One parsed RPC. ``messages`` pairs each message with its bytes as received (relayed unchanged)."""

    subscriptions: list[tuple[bool, str]] = field(default_factory=list)
    messages: list[tuple[Message, bytes]] = field(default_factory=list)
    ihave: list[tuple[str, list[bytes]]] = field(default_factory=list)
    iwant: list[bytes] = field(default_factory=list)
    graft: list[str] = field(default_factory=list)
    prune: list[tuple[str, int]] = field(default_factory=list)  # (topic, backoff seconds; 0 = not given)


# -- building: each function returns one top-level RPC field -------------------------------------------------


def subscription(topic: str, subscribe: bool) -> bytes:
    return bytes_field(1, int_field(1, int(subscribe)) + bytes_field(2, topic.encode()))


def publish(encoded_message: bytes) -> bytes:
    return key(2, LENGTH_DELIMITED) + varint(len(encoded_message)) + encoded_message


def graft(topic: str) -> bytes:
    return _control(3, bytes_field(1, topic.encode()))


def prune(topic: str, backoff: int) -> bytes:
    return _control(4, bytes_field(1, topic.encode()) + int_field(3, backoff))


def ihave(topic: str, ids: list[bytes]) -> bytes:
    return _control(1, bytes_field(1, topic.encode()) + b"".join(bytes_field(2, i) for i in ids))


def iwant(ids: list[bytes]) -> bytes:
    return _control(2, b"".join(bytes_field(1, i) for i in ids))


def frame(pieces: list[bytes]) -> bytes:
    body = b"".join(pieces)
    return varint(len(body)) + body


def _control(number: int, entry: bytes) -> bytes:
    return bytes_field(3, bytes_field(number, entry))


# -- parsing -----------------------------------------------------------------------------------------------


def decode(data: Buffer) -> Rpc:
    """Parse one RPC frame's body; ``IntegrityError`` if it is malformed."""
    rpc = Rpc()
    ids = control = 0
    for number, value in fields(memoryview(data)):
        if number == 1 and len(rpc.subscriptions) < MAX_SUBSCRIPTIONS:
            subscribe, topic = False, ""
            for n, v in fields(_bytes(value, "subscription")):
                if n == 1:
                    subscribe = bool(_int(v, "subscribe"))
                elif n == 2:
                    topic = _topic(v)
            if topic:
                rpc.subscriptions.append((subscribe, topic))
        elif number == 2:
            raw = bytes(_bytes(value, "message"))
            rpc.messages.append((_message(raw), raw))
        elif number == 3:
            for n, v in fields(_bytes(value, "control")):
                if n not in (1, 2, 3, 4):
                    continue  # IDONTWANT (v1.2) and later kinds: not used here
                control += 1
                if control > MAX_CONTROL:
                    break
                entry = fields(_bytes(v, "control entry"))
                if n in (1, 2):
                    found = [_id(x) for m, x in entry if m == (2 if n == 1 else 1)][:max(0, MAX_IDS - ids)]
                    ids += len(found)
                    if n == 1:
                        rpc.ihave.append((_topic(_first(entry, 1)), found))
                    else:
                        rpc.iwant.extend(found)
                elif n == 3:
                    rpc.graft.append(_topic(_first(entry, 1)))
                elif n == 4:
                    backoff = next((_int(x, "backoff") for m, x in entry if m == 3), 0)
                    rpc.prune.append((_topic(_first(entry, 1)), backoff))
    return rpc


def _message(raw: bytes) -> Message:
    origin = data = seqno = signature = pubkey = b""
    topics: list[str] = []
    for number, value in fields(memoryview(raw)):
        if number == 4:
            topics.append(_topic(value))
            if len(topics) > MAX_TOPICS:
                raise IntegrityError(f"a message names more than {MAX_TOPICS} topics")
        elif number in (1, 2, 3, 5, 6):
            content = bytes(_bytes(value, "message field"))
            if number == 1:
                origin = content
            elif number == 2:
                data = content
            elif number == 3:
                seqno = content
            elif number == 5:
                signature = content
            else:
                pubkey = content
    if not origin or not seqno or len(origin) + len(seqno) > MAX_ID_BYTES:
        raise IntegrityError("a message lacks its origin or sequence number, or they are too long")
    return Message(origin, data, seqno, tuple(topics), signature, pubkey)


Value = int | memoryview  # a parsed protobuf field: a varint, or a view of a length-delimited one's bytes


def _first(entry: list[tuple[int, Value]], number: int) -> Value:
    return next((v for n, v in entry if n == number), memoryview(b""))


def _bytes(value: Value, what: str) -> memoryview:
    if isinstance(value, int):
        raise IntegrityError(f"{what}: a number where bytes belong")
    return value


def _int(value: Value, what: str) -> int:
    if not isinstance(value, int):
        raise IntegrityError(f"{what}: bytes where a number belongs")
    return value


def _topic(value: Value) -> str:
    raw = _bytes(value, "topic")
    if not 0 < len(raw) <= MAX_TOPIC_BYTES:
        raise IntegrityError(f"a topic is 1 to {MAX_TOPIC_BYTES} bytes, not {len(raw)}")
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as exc:
        raise IntegrityError("a topic is not UTF-8") from exc


def _id(value: Value) -> bytes:
    raw = _bytes(value, "message id")
    if not 0 < len(raw) <= MAX_ID_BYTES:
        raise IntegrityError(f"a message id is 1 to {MAX_ID_BYTES} bytes, not {len(raw)}")
    return bytes(raw)
