"""Mutations of what peers and local clients send, for fuzzing Flair's decoders and services (``bench/fuzz.py``,
``tests/integration/test_fuzz.py``).

Structure-aware: besides random bytes, a valid message is decoded and changed where its structure is -- fields
swapped, dropped or added, values of another type, extreme integers, huge lengths and long lists, deep nesting,
repeated items and links, duplicated map keys, invalid UTF-8, truncation -- and encoded again *without* the
canonical checks a decoder makes, so the decoder sees exactly what a hostile sender could write. A signed record
can be changed and then signed again by a key of the attacker's choosing (a stranger, a member of too low a
role): it carries a valid signature and must still be refused. Every choice comes from the ``random.Random``
given, so a seed replays a campaign's choices.

    mutate_bytes(rng, data)              flip bits, cut, splice, overwrite, insert, repeat
    mutate_value(rng, value)             one change somewhere in a decoded msgpack or JSON value (a copy)
    pack(value) / dump_json(value)       encode a mutated value (``Raw`` parts go in as written)
    mutate_msgpack(rng, data)            decode, change 1-3 times, pack; or mutate_bytes
    mutate_json(rng, data)               the same for JSON text
    mutate_protobuf(rng, data)           field-level: drop, repeat, swap, renumber, retype, lie about a length
    resign(rng, record, cls, signer)     a signed record whose body was changed, signed by ``signer``
    mutate_announcement(rng, data, ...)  any of the above, on an announcement and the records inside it
    mutate_jsonrpc(rng, seeds, token)    a JSON-RPC request: body, token or path
    mutate_safetensors(rng, seeds)       a safetensors file: header as JSON, its length, deep nesting, bytes

Sizes are bounded (a growing mutation stays within ``BUDGET`` bytes; nesting 100,000 deep exists only as bytes,
never as Python objects), so a campaign of 10,000 inputs runs in memory that stays flat.

For campaigns (``bench/fuzz.py``) and tests, the package also holds what the inputs are mutations of (``World``:
a repository with history and members, its genuine records, a member's node), hostile peers (``Publisher``:
validly signed pubsub messages with mutated fields; ``HostileSource``: a sync source that lies in its heads,
records or blocks, with ``lie``) and the bookkeeping (``Campaign``: refused, accepted, forged, crashes by kind,
hangs).

Modules: ``mutate`` (the mutators), ``world`` (what inputs are mutations of, hostile peers), ``campaign`` (the
bookkeeping), ``live`` (a campaign against a running daemon over real sockets).
"""

from .campaign import HARD_S as HARD_S
from .campaign import Campaign as Campaign
from .campaign import Tally as Tally
from .campaign import off_loop as off_loop
from .campaign import progress as progress
from .campaign import unframe as unframe
from .mutate import BUDGET as BUDGET
from .mutate import EXTREME_INTS as EXTREME_INTS
from .mutate import REPEATS as REPEATS
from .mutate import Raw as Raw
from .mutate import deep as deep
from .mutate import dump_json as dump_json
from .mutate import membership_ahead as membership_ahead
from .mutate import mutate_announcement as mutate_announcement
from .mutate import mutate_bytes as mutate_bytes
from .mutate import mutate_json as mutate_json
from .mutate import mutate_jsonrpc as mutate_jsonrpc
from .mutate import mutate_msgpack as mutate_msgpack
from .mutate import mutate_protobuf as mutate_protobuf
from .mutate import mutate_safetensors as mutate_safetensors
from .mutate import mutate_value as mutate_value
from .mutate import pack as pack
from .mutate import resign as resign
from .world import BY_TYPE as BY_TYPE
from .world import CLASSES as CLASSES
from .world import HostileSource as HostileSource
from .world import Publisher as Publisher
from .world import World as World
from .world import lie as lie
from .world import records_in as records_in
from .world import seeded_identity as seeded_identity
