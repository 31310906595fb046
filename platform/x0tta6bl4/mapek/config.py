"""Controller configuration: one pydantic model with described fields, units in names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from x0tta6bl4.mesh.faults import ACTIONS
from x0tta6bl4.security.provenance import ProvenanceConfig

#: How the controller runs: detect only, fixed thresholds, or everything it can learn.
Mode = Literal["no_remediation", "static", "learning"]

#: Per-node threshold strategies learned online from the node's own recent healthy scores.
Strategy = Literal["percentile", "sigma", "iqr", "ensemble"]

#: Ticks from deciding an action to judging it, per action: it is applied the next tick, then the
#: mesh needs its own time (a reboot, routing convergence) and the queues downstream need theirs to
#: drain before the root's signals can say whether it worked.
SETTLE_TICKS: dict[str, int] = {
    "restart_node": 9,
    "reroute": 7,
    "isolate_node": 7,
    "rate_limit": 6,
    "scale_capacity": 5,
}


class ControllerConfig(BaseModel):
    """Everything the MAPE-K controller takes; every field has a documented default."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = Field(
        default="learning",
        description="learning: per-node thresholds, feedback and action statistics; static: the served "
        "model's threshold for every node, nothing learned; no_remediation: detect (learning) but never act",
    )
    strategy: Strategy = Field(
        default="ensemble",
        description="per-node threshold: percentile of recent healthy scores, mean + k sigma, Q3 + k IQR, "
        "or the median of the three",
    )
    static_threshold: float | None = Field(
        default=None,
        gt=0,
        description="static mode's one threshold for every node (None: the served model's recorded "
        "threshold); how a threshold tuned offline runs as the static baseline; other modes ignore it",
    )
    history_ticks: int = Field(default=60, ge=8, description="healthy scores kept per node for learning")
    learn_warmup_ticks: int = Field(
        default=10, ge=1, description="analysed ticks of scores a node needs before its own threshold is used"
    )
    percentile: float = Field(default=99.0, gt=50, lt=100, description="percentile strategy's quantile")
    percentile_margin: float = Field(
        default=3.0,
        ge=1,
        description="percentile strategy: multiple of the quantile's excess over the median",
    )
    sigma_k: float = Field(
        default=12.0, gt=0, description="sigma strategy: standard deviations above the mean"
    )
    iqr_k: float = Field(default=12.0, gt=0, description="IQR strategy: interquartile ranges above Q3")
    threshold_floor_share: float = Field(
        default=0.3,
        ge=0,
        description="no learned threshold goes below this share of the served model's threshold (scores "
        "near zero are noise; a share keeps the floor in the model's own score units)",
    )
    refit_every_ticks: int = Field(
        default=5, ge=1, description="ticks between re-fits of the per-node thresholds"
    )
    persist_ticks: int = Field(
        default=2, ge=1, description="consecutive analysed ticks above threshold before a node alarms"
    )
    severe_factor: float = Field(
        default=4.0, gt=1, description="a score this many times its threshold alarms at once (CRITICAL)"
    )
    correlation_hops: int = Field(
        default=3, ge=0, description="alarms within this many hops of an open incident join it as symptoms"
    )
    clear_ticks: int = Field(
        default=3, ge=1, description="ticks an incident's nodes stay below threshold to close it"
    )
    unexplained_confirm_ticks: int = Field(
        default=6,
        ge=0,
        description="ticks an incident stays unconfirmed (no action) while its root alone alarms and none of "
        "its counters moves from its baseline: the score is all that speaks for a fault there, and in "
        "drifting traffic such lone scores were false in most cases; the incident clears unconfirmed when "
        "the score falls back first (0: confirm as any other incident)",
    )
    blackhole_sign_alarms: bool = Field(
        default=True,
        description="a node that takes traffic in and forwards none, with no queue or drops to explain it, "
        "counts as above its threshold whatever its score (a blackhole's score can stay under a threshold "
        "learned from a noisy node)",
    )
    surge_sign_alarms: bool = Field(
        default=True,
        description="a node whose forwarding queue is full under several times its usual traffic counts as "
        "above its threshold whatever its score (a node in a membership grace period is judged against a "
        "raised threshold that a surge's score can stay under)",
    )
    uplink_loss_alarms: bool = Field(
        default=True,
        description="a node whose path loss and latency rose over its next hop's (its own uplink degraded) "
        "counts as above its threshold whatever its score (a degraded link's score fades within a few "
        "ticks while the loss stays)",
    )
    recovery_check: bool = Field(
        default=True,
        description="leave an incident unconfirmed (no action) while its root's health counters all moved "
        "towards health (latency, loss down, links up) and its other nodes show the same or nothing but "
        "their scores: a node reconnected after being cut off scores as high as a fault",
    )
    peer_ratio: float = Field(
        default=1.0,
        gt=0,
        description="peer-group check: a node is a root candidate only when its excess is at least this "
        "share of its neighbours' largest excess",
    )
    trend_ticks: int = Field(default=10, ge=3, description="window of the mem_util trend check, in ticks")
    trend_slope_per_tick: float = Field(
        default=0.008, gt=0, description="mem_util growth per tick that counts as a leak trend"
    )
    trend_level: float = Field(default=0.6, gt=0, le=1, description="mem_util above which a trend alarms")
    leak_watch: bool = Field(
        default=True,
        description="learning modes: also alarm on a node whose mem_util grows beyond its own learned "
        "tick-to-tick noise for a few ticks (a CUSUM of its increments), at any level; the trend check "
        "above waits for the level, which a slow leak reaches late",
    )
    leak_allowance_sigmas: float = Field(
        default=2.5, gt=0, description="mem_util growth per tick, in the node's learned spreads, not counted"
    )
    leak_alarm_sigmas: float = Field(
        default=8.0, gt=0, description="the CUSUM sum, in the node's learned spreads, at which a leak alarms"
    )
    route_settle_ticks: int = Field(
        default=4,
        ge=0,
        description="ticks after opening that an incident whose root reports but has no route waits before "
        "acting: routing around a change (a blackhole attracting routes) settles first, and with it the "
        "root's own signs",
    )
    membership_load_change_share: float = Field(
        default=0.3,
        gt=0,
        le=1,
        description="a node leaving or joining (its telemetry row turning NaN or back) moves the routing "
        "tree; members whose next hop changed, or whose carried load (nodes routing through them) changed "
        "by at least this share of the larger value, forget their learned scores (history learned under "
        "the old tree judges the new transit traffic as anomalous) and relearn from the static threshold",
    )
    membership_grace_ticks: int = Field(
        default=20,
        ge=0,
        description="ticks after such a membership change during which the moved nodes, the joiners and "
        "the leavers' and joiners' neighbours are judged against at least membership_grace_threshold_share "
        "of the served model's threshold (learning modes; queues, routes and the scorer's window of a "
        "joiner settle meanwhile)",
    )
    membership_grace_threshold_share: float = Field(
        default=4.0,
        gt=0,
        description="the grace period's threshold floor, as a multiple of the served model's threshold "
        "(while a joiner's scoring window fills, its score reached 3.4x the model's threshold in the drift "
        "bench; a silent node still alarms in grace, by its own sign)",
    )
    rag_k: int = Field(default=3, ge=1, le=10, description="runbooks asked for per incident")
    rag_k_wide: int = Field(
        default=10,
        ge=1,
        le=10,
        description="runbooks asked for, once per incident, when none of the first rag_k names an action "
        "whose preconditions hold (the reports of resolved incidents the controller ingests can crowd the "
        "runbook that fits out of the first ranks: a blackhole's rx surge reads like a congestion's)",
    )
    settle_ticks: dict[str, int] = Field(
        default_factory=lambda: dict(SETTLE_TICKS),
        description="per action: ticks from deciding it to judging it by the root's own signals (the "
        "action's own effect, routing convergence and the queues downstream draining); actions not "
        "named keep their default",
    )
    max_attempts: int = Field(default=4, ge=1, description="actions tried per incident before escalating")
    max_actions_per_tick: int = Field(default=8, ge=1, description="actions issued in one tick at most")
    restart_cooldown_ticks: int = Field(
        default=30, ge=0, description="no second restart_node within this many ticks"
    )
    max_capacity_scalings: int = Field(
        default=2, ge=1, description="scale_capacity at most this often per node"
    )
    false_alarm_raise: float = Field(
        default=1.25, ge=1, description="a false alarm multiplies the node's threshold by this"
    )
    late_detection_lower: float = Field(
        default=0.9, gt=0, le=1, description="a late detection multiplies the node's threshold by this"
    )
    late_detection_ticks: int = Field(
        default=2, ge=1, description="detections this many ticks after the score first rose count as late"
    )
    multiplier_bounds: tuple[float, float] = Field(
        default=(0.5, 8.0), description="range of the feedback multiplier on a node's threshold"
    )
    healthy_interval_ticks: int = Field(
        default=2, ge=1, description="monitoring interval while the mesh is HEALTHY (every tick otherwise)"
    )
    push_every_ticks: int = Field(
        default=50, ge=1, description="ticks between pushes of learned thresholds to the served detector"
    )
    checkpoint_every_ticks: int = Field(
        default=10, ge=1, description="ticks between saves of the learner state to the knowledge store"
    )
    critical_unserviceable_share: float = Field(
        default=0.05,
        gt=0,
        le=1,
        description="mesh is CRITICAL when this share of nodes cannot reach a gateway",
    )
    critical_incidents: int = Field(
        default=6, ge=1, description="mesh is CRITICAL with this many open incidents"
    )
    knowledge_path: str | None = Field(
        default=None, description="SQLite knowledge store (None: knowledge.sqlite in the runs directory)"
    )
    ingest_resolved: bool = Field(default=True, description="add resolved incidents to the RAG corpus")
    stream_id: str = Field(default="mapek", description="stream id the controller scores under")
    provenance: ProvenanceConfig = Field(
        default_factory=ProvenanceConfig,
        description="whose runbook signatures make an action executable, and where the controller's "
        "audit ledger and signing identity are",
    )
    audit: bool = Field(
        default=True, description="record threshold pushes, actions and their verdicts in the audit ledger"
    )

    @field_validator("settle_ticks")
    @classmethod
    def _known_actions(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(ACTIONS))
        if unknown:
            raise ValueError(f"settle_ticks names unknown actions {unknown} (known: {', '.join(ACTIONS)})")
        if any(v < 2 for v in value.values()):
            raise ValueError("settle_ticks must be >= 2 (applied next tick, judged at least one tick later)")
        return {**SETTLE_TICKS, **value}

    @property
    def learning(self) -> bool:
        return self.mode != "static"

    @property
    def remediation(self) -> bool:
        return self.mode != "no_remediation"
