"""The Flower ClientApp each site's SuperNode runs: train on the site's sealed data, locally.

Mods, outermost first: :func:`~medclave.fl.gate.make_attest_mod` (verify the aggregator, attest
the reply), Flower's ``secaggplus_mod`` (mask the update so the aggregator sees only the sum) and
``fixedclipping_mod`` (clip the update to the DP clipping norm before it is masked). The run
configuration switches the last three off for the "plain Flower" benchmark baseline; the app
is otherwise the same.

Node configuration (``flower-supernode --node-config``): ``site-dir`` (the site folder), and,
for the demo's fault injection on sim only, ``demo-tamper-round`` (the site's evidence reports
other training code from that round on) and ``demo-drop-round`` (the site fails in the middle
of that round, after SecAgg+ key sharing, as a site that goes down would).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client import Client, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from numpy.typing import NDArray

from medclave.errors import FederationError
from medclave.fl import cohort, model
from medclave.fl.gate import STATE_RECORD, SiteIdentity, make_attest_mod
from medclave.fl.site import Site, open_site


def _flag(context: Context, key: str) -> bool:
    return bool(context.run_config.get(key, True))


def _site(context: Context) -> Site:
    return open_site(str(context.node_config["site-dir"]))


def _identity(context: Context) -> SiteIdentity:
    site = _site(context)
    tamper = int(context.node_config.get("demo-tamper-round", 0)) if _is_sim(site) else 0
    return site.identity(tamper_round=tamper)


def _is_sim(site: Site) -> bool:
    return site.meta.get("platform") == "sim"


class SiteClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.context = context
        self.site = _site(context)

    def _fresh_or_refuse(self) -> None:
        if not _flag(self.context, "gate"):
            return
        state = self.context.state.config_records.get(STATE_RECORD)
        if state is None or state.get("fresh") is not True:
            raise FederationError("fl.aggregator_refused",
                                  "the aggregator has not answered this site's challenge")

    def get_parameters(self, config: dict[str, Any]) -> list[NDArray[np.float64]]:
        return model.initial_params()

    def fit(self, parameters: list[NDArray[np.float64]], config: dict[str, Any]
            ) -> tuple[list[NDArray[np.float64]], int, dict[str, Any]]:
        self._fresh_or_refuse()
        round_ = int(config.get("server_round", 0))
        drop = int(self.context.node_config.get("demo-drop-round", 0))
        if drop and drop == round_ and _is_sim(self.site):
            raise RuntimeError(f"demo: site {self.site.name} goes down in round {round_}")
        data = self.site.load_data()
        params = model.train([np.asarray(p, dtype=np.float64) for p in parameters],
                             cohort.preprocess(data["x"]), data["y"],
                             steps=int(config.get("local_steps", model.LOCAL_STEPS)))
        # Under DP every site weighs the same: the sensitivity of the mean is then one
        # clipped update over the number of sites, which is what the accountant assumes.
        weight = 1 if bool(config.get("uniform_weights", False)) else int(data["y"].size)
        return params, weight, {}

    def evaluate(self, parameters: list[NDArray[np.float64]], config: dict[str, Any]
                 ) -> tuple[float, int, dict[str, Any]]:
        self._fresh_or_refuse()
        data = self.site.load_data()
        x, y = cohort.preprocess(data["x_test"]), data["y_test"]
        params = [np.asarray(p, dtype=np.float64) for p in parameters]
        p = np.clip(model.predict(params, x), 1e-9, 1 - 1e-9)
        loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        scores = model.evaluate(params, x, y)
        return loss, int(y.size), {"auroc": scores.auroc, "auprc": scores.auprc}


def client_fn(context: Context) -> Client:
    client: Client = SiteClient(context).to_client()
    return client


def _when(flag: str, mod: Mod) -> Mod:
    def maybe(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if _flag(context, flag):
            return mod(msg, context, call_next)
        return call_next(msg, context)
    return maybe


app = ClientApp(client_fn=client_fn, mods=[
    _when("gate", make_attest_mod(_identity)),
    _when("secagg", secaggplus_mod),
    _when("dp", fixedclipping_mod),
])
