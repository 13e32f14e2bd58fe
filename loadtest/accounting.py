"""Exact delivery accounting for load tests: who should have got each message, and who did.

The load generator records every message it sends, with the set of clients that should receive
it (its *audience*, decided by the caller's membership rule), and every message a client
receives. After the run `DeliveryLedger.report` compares the two and returns exact counts plus a
few concrete (client, message) examples of each fault, so a failing run points at evidence
rather than at a percentage.

Pure: no sockets, no clock. Times are floats from one clock shared by every generator process
(`time.time()`, or `time.monotonic()` on one Linux host, where CLOCK_MONOTONIC is system-wide).
Each process keeps its own ledger; the parent merges them, and `to_dict`/`from_dict` carry a
ledger across the process boundary as JSON-safe plain data.

Definitions — every receipt lands in exactly one of delivered, in-flight delivered, duplicated,
unexpected or unknown:

- *expected*: one per (judged message, member of its audience). The ledger does not drop the
  sender from the audience; whether a sender hears its own message is the caller's rule.
- *delivered*: a client's first receipt of a judged message whose audience includes it.
- *lost*: expected minus delivered.
- *duplicated*: every receipt of a message by one client after its first (extra copies).
- *unexpected*: a first receipt by a client outside the audience — a leak.
- *unknown*: a receipt whose key no ledger recorded as sent (corrupt or foreign message).
- *reordered*: a delivered receipt whose send order is lower than one already delivered to the
  same client from the same sender in the same channel. Order is judged per (client, channel,
  sender) only: two senders racing into a channel have no order the generator can know, while
  one sender's messages do. So "4, 1, 2, 3" counts 3 (each of 1, 2, 3 arrived after 4).
  Receipts are taken in `received_at` order; the sort is stable, so ties keep recording order.
- *in flight*: a message sent after `grace_deadline` (end of run minus grace) is not judged
  lost; its audience and receipts are counted separately. Duplicates, leaks, unknowns and
  reorders are judged for every message, since their evidence is a receipt, not an absence.

`StoredCheck` judges what was read back from history the same way: every acknowledged message
stored under its id, and no message stored twice. A load-test message is recognised by its key,
the first word of its content (`content_key`): stored messages carry no nonce.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

MessageKey = tuple[int, int] | str
"""(channel_id, message_id) once the server has assigned an id, or a client nonce string."""
ClientId = int | str
ChannelId = int | str
Membership = Callable[[ChannelId], Iterable[ClientId]]

FORMAT_VERSION = 1
_KINDS = ("lost", "duplicated", "unexpected", "reordered", "unknown")


def _key(raw: Any) -> MessageKey:
    """Accept lists too: a (channel, message) pair comes back from JSON as a list."""
    if isinstance(raw, str) or (type(raw) is tuple and len(raw) == 2):
        return raw
    if isinstance(raw, tuple | list) and len(raw) == 2:
        return (raw[0], raw[1])
    raise TypeError(f"message key must be a nonce str or a (channel_id, message_id) pair: {raw!r}")


def _plain(key: MessageKey) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _order(value: Any) -> tuple[int, Any]:
    """Sort key for ids that may mix int and str, so examples come out in a stable order."""
    return (1, value) if isinstance(value, str) else (0, value)


class _Sent(NamedTuple):
    channel_id: ChannelId
    sender: ClientId
    sent_at: float
    seq: int
    audience: int  # index into DeliveryLedger._audiences


@dataclass(frozen=True)
class DeliveryReport:
    """Exact counts for messages sent at or before `grace_deadline`; see the module docstring."""

    grace_deadline: float
    sent: int
    expected: int
    delivered: int
    lost: int
    duplicated: int
    unexpected: int
    reordered: int
    unknown: int
    in_flight_sent: int
    in_flight_expected: int
    in_flight_delivered: int
    receipts: int
    examples: dict[str, list[dict[str, Any]]]

    @property
    def clean(self) -> bool:
        """True when nothing was lost, duplicated, leaked, reordered or unaccounted for."""
        return not (
            self.lost or self.duplicated or self.unexpected or self.reordered or self.unknown
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeliveryLedger:
    """What one generator process sent and received; merge the processes' ledgers to judge.

    `membership(channel_id)` gives a message's audience when `record_send` is not told its
    `recipients`. Audiences are interned: the messages of one channel share one frozenset, so
    a 50k-member channel costs one set, not one per message (pass the same frozenset object
    each time and interning is free). A receipt is a bare (client, key, received_at) tuple.
    """

    def __init__(self, membership: Membership | None = None) -> None:
        self._membership = membership
        self._sent: dict[MessageKey, _Sent] = {}
        self._audiences: list[frozenset[ClientId]] = []
        self._audience_ids: dict[frozenset[ClientId], int] = {}
        self._next_seq: dict[tuple[ChannelId, ClientId], int] = {}
        self._receipts: list[tuple[ClientId, MessageKey, float]] = []

    @property
    def sent_count(self) -> int:
        return len(self._sent)

    @property
    def receipt_count(self) -> int:
        return len(self._receipts)

    def record_send(
        self,
        key: MessageKey,
        *,
        channel_id: ChannelId,
        sender: ClientId,
        sent_at: float,
        recipients: Iterable[ClientId] | None = None,
        seq: int | None = None,
    ) -> int:
        """Record one sent message and return its order number within (channel, sender).

        `seq` defaults to a counter per (channel, sender) in call order; pass it explicitly
        (e.g. the server's message id) when send order is known better elsewhere.
        """
        key = _key(key)
        if key in self._sent:
            raise ValueError(f"message {key!r} recorded as sent twice")
        if recipients is None:
            if self._membership is None:
                raise TypeError("record_send needs recipients= or a ledger membership function")
            recipients = self._membership(channel_id)
        stream = (channel_id, sender)
        nxt = self._next_seq.get(stream, 0)
        if seq is None:
            seq = nxt
        self._next_seq[stream] = max(nxt, seq + 1)
        self._sent[key] = _Sent(channel_id, sender, float(sent_at), seq, self._intern(recipients))
        return seq

    def record_receipt(self, client: ClientId, key: MessageKey, received_at: float) -> None:
        """Record that `client` received message `key`. Kept cheap: it runs once per delivery."""
        self._receipts.append((client, _key(key), float(received_at)))

    def _intern(self, recipients: Iterable[ClientId]) -> int:
        audience = recipients if isinstance(recipients, frozenset) else frozenset(recipients)
        index = self._audience_ids.get(audience)
        if index is None:
            index = len(self._audiences)
            self._audiences.append(audience)
            self._audience_ids[audience] = index
        return index

    def merge(self, other: DeliveryLedger) -> None:
        """Add `other`'s sends and receipts to this ledger; on a conflict raise, changing nothing.

        A message may be sent by one ledger only, and a (channel, sender) stream may not reuse
        an order number: both mean a sender was split across processes, which would make the
        reorder count meaningless.
        """
        if other is self:
            raise ValueError("cannot merge a ledger into itself")
        clash = self._sent.keys() & other._sent.keys()
        if clash:
            raise ValueError(
                f"{len(clash)} messages sent in both ledgers, e.g. {min(clash, key=_order)!r}"
            )
        used = {(s.channel_id, s.sender, s.seq) for s in self._sent.values()}
        for key, s in other._sent.items():
            if (s.channel_id, s.sender, s.seq) in used:
                raise ValueError(
                    f"message {key!r} reuses order {s.seq} of sender {s.sender!r} in channel "
                    f"{s.channel_id!r}; keep each sender in one ledger or pass seq explicitly"
                )
        remap = [self._intern(audience) for audience in other._audiences]
        for key, s in other._sent.items():
            self._sent[key] = s._replace(audience=remap[s.audience])
            stream = (s.channel_id, s.sender)
            self._next_seq[stream] = max(self._next_seq.get(stream, 0), s.seq + 1)
        self._receipts.extend(other._receipts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain data; receipts are [client, key, received_at] triples."""
        return {
            "format": FORMAT_VERSION,
            "audiences": [sorted(a, key=_order) for a in self._audiences],
            "sent": [
                [_plain(k), s.channel_id, s.sender, s.sent_at, s.seq, s.audience]
                for k, s in self._sent.items()
            ],
            "receipts": [[c, _plain(k), t] for c, k, t in self._receipts],
        }

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], membership: Membership | None = None
    ) -> DeliveryLedger:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported ledger format {data.get('format')!r}")
        ledger = cls(membership)
        remap = [ledger._intern(audience) for audience in data["audiences"]]
        for raw_key, channel_id, sender, sent_at, seq, audience in data["sent"]:
            key = _key(raw_key)
            ledger._sent[key] = _Sent(channel_id, sender, float(sent_at), seq, remap[audience])
            stream = (channel_id, sender)
            ledger._next_seq[stream] = max(ledger._next_seq.get(stream, 0), seq + 1)
        ledger._receipts = [(c, _key(k), float(t)) for c, k, t in data["receipts"]]
        return ledger

    def report(self, grace_deadline: float, *, max_examples: int = 10) -> DeliveryReport:
        """Judge the run; messages sent after `grace_deadline` are in flight, not lost."""
        examples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KINDS}
        n: Counter[str] = Counter()

        def note(kind: str, **fields: Any) -> None:
            n[kind] += 1
            if len(examples[kind]) < max_examples:
                examples[kind].append(fields)

        seen: set[tuple[ClientId, MessageKey]] = set()
        got: Counter[MessageKey] = Counter()  # judged deliveries per message
        top: dict[tuple[ClientId, ChannelId, ClientId], int] = {}
        for client, key, _at in sorted(self._receipts, key=itemgetter(2)):
            sent = self._sent.get(key)
            if sent is None:
                note("unknown", client=client, key=key)
                continue
            if (client, key) in seen:
                note("duplicated", client=client, key=key)
                continue
            seen.add((client, key))
            if client not in self._audiences[sent.audience]:
                note("unexpected", client=client, key=key, channel_id=sent.channel_id)
                continue
            if sent.sent_at <= grace_deadline:
                n["delivered"] += 1
                got[key] += 1
            else:
                n["in_flight_delivered"] += 1
            stream = (client, sent.channel_id, sent.sender)
            highest = top.get(stream)
            if highest is not None and sent.seq < highest:
                note("reordered", client=client, key=key, seq=sent.seq, after_seq=highest)
            else:
                top[stream] = sent.seq

        short: list[tuple[MessageKey, _Sent]] = []
        for key, s in self._sent.items():
            size = len(self._audiences[s.audience])
            if s.sent_at > grace_deadline:
                n["in_flight_sent"] += 1
                n["in_flight_expected"] += size
                continue
            n["sent"] += 1
            n["expected"] += size
            if got[key] < size:
                short.append((key, s))
        n["lost"] = n["expected"] - n["delivered"]
        # Examples of loss in send order; only messages with a shortfall are examined.
        short.sort(key=lambda ks: (ks[1].sent_at, ks[1].seq, _order(ks[0])))
        for key, s in short:
            if len(examples["lost"]) >= max_examples:
                break
            missing = [c for c in self._audiences[s.audience] if (c, key) not in seen]
            for client in sorted(missing, key=_order)[: max_examples - len(examples["lost"])]:
                examples["lost"].append({"client": client, "key": key, "sent_at": s.sent_at})

        return DeliveryReport(
            grace_deadline=grace_deadline,
            sent=n["sent"],
            expected=n["expected"],
            delivered=n["delivered"],
            lost=n["lost"],
            duplicated=n["duplicated"],
            unexpected=n["unexpected"],
            reordered=n["reordered"],
            unknown=n["unknown"],
            in_flight_sent=n["in_flight_sent"],
            in_flight_expected=n["in_flight_expected"],
            in_flight_delivered=n["in_flight_delivered"],
            receipts=len(self._receipts),
            examples=examples,
        )


def content_key(content: Any) -> str | None:
    """The key a load-test message carries as the first word of its content (the generator
    also uses it as the nonce), or None for anything else."""
    if not isinstance(content, str) or not content:
        return None
    return content.split(" ", 1)[0]


class StoredCheck:
    """Acknowledged messages against the messages read back from history.

    `acked` is ``{(channel_id, message_id): key}`` from the MESSAGE_ACKs; `also` are keys sent
    but never acknowledged (they must not be stored twice either). Feed every stored message
    of those channels to `see`, then `report`:

    - *missing*: an acknowledged (channel, id) that history does not hold — an ACK promises
      durability;
    - *stored twice*: a key found under more than one id — one send became two messages (a
      resend the gateway did not recognise as a retry).
    """

    def __init__(self, acked: dict[tuple[int, int], str], also: Iterable[str] = ()) -> None:
        self.acked = acked
        self.keys = set(acked.values()) | set(also)
        self.found: set[tuple[int, int]] = set()
        self.ids: dict[str, set[tuple[int, int]]] = {}

    def see(self, channel_id: int, message_id: int, payload: str | bytes) -> None:
        where = (channel_id, message_id)
        if where in self.acked:
            self.found.add(where)
        try:
            d = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        key = content_key(d.get("content")) if isinstance(d, dict) else None
        if key in self.keys:
            self.ids.setdefault(key, set()).add(where)

    def report(self, *, max_examples: int = 5) -> dict[str, Any]:
        missing = sorted(w for w in self.acked if w not in self.found)
        twice = sorted((k, sorted(w)) for k, w in self.ids.items() if len(w) > 1)
        return {
            "acknowledged": len(self.acked),
            "missing_from_history": len(missing),
            "missing_examples": [
                {"channel_id": ch, "id": mid, "key": self.acked[(ch, mid)]}
                for ch, mid in missing[:max_examples]
            ],
            "stored_twice": len(twice),
            "stored_twice_examples": [
                {"key": key, "stored_as": [list(w) for w in where]}
                for key, where in twice[:max_examples]
            ],
        }
