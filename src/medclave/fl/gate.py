"""Continuous verification, both ways, on every message of every round.

The aggregator side is :class:`GatedGrid`, a Flower ``Grid`` wrapped around the one the ServerApp
is given, so every workflow (Flower's default fit and evaluate workflows, ``SecAggPlusWorkflow``)
goes through it unchanged. Each message out gets a fresh 32-byte nonce and the aggregator's own
evidence (purpose ``aggregator``, binding the round and the last challenge the site sent). Each
reply must carry the site's evidence for that nonce, its admitted node key, the round, and the
digest of exactly what the reply carries (:func:`~medclave.fl.evidence.content_digest`). A reply
that fails is dropped before any workflow sees it, as if the site had gone silent (SecAgg+
completes without it), the reason is recorded (:class:`Verdict`), and the site is excluded for
the rest of the run: it no longer appears among the grid's nodes, and nothing more is sent to
it. A reply that reports an error is dropped the same way (a site that fails mid-round).

The site side is :func:`make_attest_mod`, a Flower client mod placed outermost: on the way in
it appraises the aggregator's evidence under the site's own policy and strips it; on the way out
it attaches the site's evidence over the reply's digest and a fresh challenge of its own. The
site's ClientApp trains or evaluates only when this message's aggregator evidence answered the
site's previous challenge (``fresh`` in the node's state), so no data is touched on evidence the
site could not check for freshness.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import GetPropertiesIns
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common.recorddict_compat import getpropertiesins_to_recorddict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from medclave.errors import MedclaveError
from medclave.fl.evidence import (
    PURPOSE_AGGREGATOR,
    PURPOSE_UPDATE,
    Appraiser,
    content_digest,
    parse_evidence,
)
from medclave.protocol.evidence import EvidenceBundle

log = logging.getLogger("medclave.fl")

ATTEST_RECORD = "medclave.attest"
STATE_RECORD = "medclave.fl"
REFUSED_BY_SITE = 4031  # Flower error code of a site's reply refusing the aggregator

Attester = Callable[[bytes, dict[str, Any]], EvidenceBundle]


@dataclass(frozen=True)
class Verdict:
    """One reply's fate: accepted (``code`` empty) or dropped, and why."""

    round: int
    site: str
    node_id: int
    accepted: bool
    code: str = ""
    evidence_digest: str = ""
    update: str = ""
    message_type: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Admitted:
    site: str
    node_key: str


class GatedGrid(Grid):
    """``inner`` with attestation on every message; ``members`` maps node ids to admitted sites."""

    def __init__(self, inner: Grid, *, federation: str, members: Mapping[int, Admitted],
                 appraiser: Appraiser, attest: Attester,
                 on_verdict: Callable[[Verdict], None]) -> None:
        self._inner = inner
        self._federation = federation
        self._members = dict(members)
        self._appraiser = appraiser
        self._attest = attest
        self._on_verdict = on_verdict
        self.excluded: dict[int, str] = {}
        self._site_nonce: dict[int, str] = {}

    # --- delegation ---------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._inner.get_node_ids()
                if n in self._members and n not in self.excluded]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise MedclaveError("internal", "the gated grid sends only through send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise MedclaveError("internal", "the gated grid sends only through send_and_receive")

    # --- the gate -----------------------------------------------------------------------------
    def roll_call(self, round_: int, *, timeout: float | None) -> set[int]:
        """Before a round's first stage: every site answers with fresh evidence for this round
        (a ``get_properties`` message, which touches no data). A site that fails is excluded
        before the round samples anyone, so SecAgg+ never counts on it: its workflow tolerates
        sites lost after key sharing, not sites lost while it is being set up."""
        content = getpropertiesins_to_recorddict(GetPropertiesIns({}))
        messages = [Message(content=RecordDict(dict(content.items())), dst_node_id=node,
                            message_type=MessageTypeLegacy.GET_PROPERTIES, group_id=str(round_))
                    for node in self.get_node_ids()]
        return {r.metadata.src_node_id for r in self.send_and_receive(messages, timeout=timeout)}

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        sent: dict[int, bytes] = {}
        out: list[Message] = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self._members or node in self.excluded:
                continue
            nonce = secrets.token_bytes(32)
            sent[node] = nonce
            round_ = _round_of(msg)
            evidence = self._attest(nonce, {
                "purpose": PURPOSE_AGGREGATOR, "federation": self._federation,
                "round": round_, "site_nonce": self._site_nonce.get(node, ""),
            })
            content = RecordDict(dict(msg.content.items()))
            content[ATTEST_RECORD] = ConfigRecord({
                "nonce": nonce.hex(), "evidence": evidence.model_dump_json().encode()})
            msg.content = content
            out.append(msg)
        if not out:
            return []
        replies = self._inner.send_and_receive(out, timeout=timeout)
        return [r for r in replies if self._accept(r, sent)]

    def _accept(self, reply: Message, sent: Mapping[int, bytes]) -> bool:
        node = reply.metadata.src_node_id
        member = self._members.get(node)
        round_ = _round_of(reply)
        site = member.site if member else "?"
        if member is None or node not in sent:
            return False
        if node in self.excluded:
            return False
        if reply.has_error():
            code = ("fl.aggregator_refused" if reply.error.code == REFUSED_BY_SITE
                    else "fl.run_failed")
            self._on_verdict(Verdict(round_, site, node, False, code,
                                     message_type=reply.metadata.message_type))
            return False
        try:
            record = reply.content.config_records[ATTEST_RECORD]
            evidence = record["evidence"]
            site_nonce = record["site_nonce"]
            if not isinstance(evidence, bytes) or not isinstance(site_nonce, str):
                raise KeyError(ATTEST_RECORD)
            bundle = parse_evidence(evidence)
            update = content_digest(reply.content, skip=ATTEST_RECORD)
            verification = self._appraiser.check(bundle, nonce=sent[node], expect={
                "purpose": PURPOSE_UPDATE, "federation": self._federation,
                "node_key": member.node_key, "round": round_, "update": update,
                "site_nonce": site_nonce,
            })
        except KeyError:
            return self._exclude(Verdict(round_, site, node, False, "fl.update_unbound",
                                         message_type=reply.metadata.message_type))
        except MedclaveError as exc:
            return self._exclude(Verdict(round_, site, node, False, exc.code,
                                         message_type=reply.metadata.message_type))
        self._site_nonce[node] = site_nonce
        del reply.content[ATTEST_RECORD]
        self._on_verdict(Verdict(round_, site, node, True, "", verification.evidence_digest,
                                 update, reply.metadata.message_type))
        return True

    def _exclude(self, verdict: Verdict) -> bool:
        log.warning("site %s dropped from round %d on: %s", verdict.site, verdict.round,
                    verdict.code)
        self.excluded[verdict.node_id] = verdict.code
        self._on_verdict(verdict)
        return False


def _round_of(msg: Message) -> int:
    try:
        return int(msg.metadata.group_id or 0)
    except ValueError:
        return 0


# --- the site side ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SiteIdentity:
    federation: str
    site: str
    node_key: str
    appraiser: Appraiser
    attest: Callable[[int], Attester]  # round -> attester (demo fault injection may vary it)


def make_attest_mod(identity: Callable[[Context], SiteIdentity]) -> Callable[
        [Message, Context, ClientAppCallable], Message]:
    """The outermost client mod; ``identity`` reads the site from the node's configuration."""

    def attest_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        ident = identity(context)
        state = context.state.config_records.setdefault(STATE_RECORD, ConfigRecord())
        last = state.get("site_nonce", "")
        round_ = _round_of(msg)
        try:
            record = msg.content.config_records[ATTEST_RECORD]
            nonce_hex, evidence = record["nonce"], record["evidence"]
            if not isinstance(nonce_hex, str) or not isinstance(evidence, bytes):
                raise KeyError(ATTEST_RECORD)
            nonce = bytes.fromhex(nonce_hex)
            bundle = parse_evidence(evidence)
            ident.appraiser.check(bundle, nonce=nonce, expect={
                "purpose": PURPOSE_AGGREGATOR, "federation": ident.federation, "round": round_})
        except (KeyError, ValueError, MedclaveError) as exc:
            code = exc.code if isinstance(exc, MedclaveError) else "fl.update_unbound"
            log.error("site %s refused the aggregator: %s", ident.site, code)
            return Message(Error(code=REFUSED_BY_SITE, reason=f"fl.aggregator_refused ({code})"),
                           reply_to=msg)
        stated = bundle.runtime.get("site_nonce")
        state["fresh"] = bool(last) and stated == last
        del msg.content[ATTEST_RECORD]
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        site_nonce = secrets.token_hex(32)
        update = content_digest(reply.content, skip=ATTEST_RECORD)
        mine = ident.attest(round_)(nonce, {
            "purpose": PURPOSE_UPDATE, "federation": ident.federation,
            "node_key": ident.node_key, "round": round_, "update": update,
            "site_nonce": site_nonce,
        })
        reply.content[ATTEST_RECORD] = ConfigRecord({
            "evidence": mine.model_dump_json().encode(), "site_nonce": site_nonce})
        state["site_nonce"] = site_nonce
        return reply

    return attest_mod
