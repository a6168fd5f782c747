"""What the owner side and the holder side of one node share: identity, config, the two clock
values of the input being handled (network and data), membership, presence, credentials,
counters and the action list; the device's signer (every message leaves sealed, ``seal``) and
the answer budget (``answer``).

One ``Context`` per ``ReplicationNode``; the node updates ``now`` and ``data_now`` before it
calls either side, and collects ``out`` after.
"""

from __future__ import annotations

from collections import Counter

from agent.protocol import auth
from agent.protocol.budget import AnswerBudget
from agent.protocol.trust import TrustStore
from agent.replication import wire
from agent.replication.actions import Action, Broadcast, Send
from agent.replication.tuning import ReplicationConfig
from ledger.identity import PublicKey, SigningKey


class Context:
    def __init__(
        self,
        device_id: str,
        key: SigningKey,
        config: ReplicationConfig,
        creds: TrustStore,
        signer: auth.Signer,
        now_ms: int,
    ) -> None:
        self.device_id = device_id
        self.key = key
        self.signer = signer
        self.budget = AnswerBudget(config.answer_budget_bytes, config.answer_interval_ms)
        self.config = config
        self.rng = config.rng
        self.creds = creds
        self.now = now_ms  # the network clock: request timeouts, retries, scores
        self.data_now = now_ms  # the data clock: audit rounds, repair delay (REPLICATION.md 15.6)
        self.out: list[Action] = []
        self.counters: Counter[str] = Counter()
        self.domains: dict[str, frozenset[str]] = {}
        self.members: frozenset[str] = frozenset()  # every domain peer, self excluded
        self.up: set[str] = set()
        # The network clock when this device last received any domain or inbox message (either
        # core's; fed by the runtime): a request that timed out with nothing received since it
        # left says the device's own link was down, not that the peer was silent.
        self.heard_ms: int | None = None

    def seal(self, msg: wire.Message) -> bytes:
        """The bytes of ``msg`` as they leave this device: encoded and authenticated."""
        return auth.seal(wire.encode(msg), self.signer)

    def send(self, peer_id: str, msg: wire.Message) -> None:
        self.out.append(Send(peer_id, self.seal(msg)))
        self.counters[f"sent_{wire.NAMES[_type(msg)].lower()}"] += 1

    def answer(self, peer_id: str, msg: wire.Message) -> None:
        """Send an answer ``peer_id`` (proven: it asked) drew, within its budget; counted and
        not sent when it does not fit (the asker times out, as after a loss)."""
        payload = self.seal(msg)
        if not self.budget.allow(peer_id, len(payload), self.now):
            self.counters["answers_over_budget"] += 1
            return
        self.out.append(Send(peer_id, payload))
        self.counters[f"sent_{wire.NAMES[_type(msg)].lower()}"] += 1

    def broadcast(self, msg: wire.Message) -> None:
        payload = self.seal(msg)
        for domain in sorted(self.domains):
            if len(self.domains[domain]) > 1:
                self.out.append(Broadcast(domain, payload))

    def site(self, device_id: str) -> str | None:
        keys = self.creds.keys(device_id)
        return None if keys is None else keys.certificate.site

    def current_key(self, device_id: str) -> PublicKey | None:
        """The key a device signs with now (its last rotation), None if unknown or revoked."""
        keys = self.creds.keys(device_id)
        if keys is None or None in keys.revoked_from or not keys.spans:
            return None
        key = keys.spans[-1].key
        return None if key.key_id in keys.revoked_from else key


def _type(msg: wire.Message) -> int:
    return {
        wire.Store: wire.STORE,
        wire.ReceiptMsg: wire.RECEIPT,
        wire.Refuse: wire.REFUSE,
        wire.Challenge: wire.CHALLENGE,
        wire.Proof: wire.PROOF,
        wire.Release: wire.RELEASE,
        wire.Space: wire.SPACE,
        wire.Busy: wire.BUSY_MSG,
    }[type(msg)]
