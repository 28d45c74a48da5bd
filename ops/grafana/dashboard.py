"""The skyattr Grafana dashboard, generated from code with Grafana's own grafana-foundation-sdk.

    .venv/bin/python ops/grafana/dashboard.py           # (re)write ops/grafana/skyattr-dashboard.json
    .venv/bin/python ops/grafana/dashboard.py --check   # exit 1 when the committed JSON is not what this generates
    .venv/bin/python ops/grafana/dashboard.py --stdout  # print it instead

Needs ``pip install 'grafana-foundation-sdk==1769699998!10.1.0'`` (ops/ci/check-prometheus.sh installs it; the
output is pinned to that release). Every metric is one of streamer/sinks/prometheus.py's
(tests/ops/test_monitoring.py checks
each name against a running daemon); the thresholds are the daemon's defaults, read from ``kernels.defaults`` (the
one place they are written), and match ops/prometheus/skyattr-rules.yaml.
Variables: ``datasource`` (any Prometheus), ``job``, ``instance`` and ``indicator``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

try:
    from kernels import defaults
except ImportError:  # run from a checkout without the project installed: the repository root holds kernels/
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from kernels import defaults
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, timeseries
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

OUT = Path(__file__).resolve().parent / "skyattr-dashboard.json"
UID = "skyattr"

# The daemon's defaults (README "Configuration"), also used by the alert rules.
TAU_RES = defaults.TAU_RES  # --tau-res
TAU_COVERAGE = defaults.TAU_COVERAGE  # --tau-coverage
INTERVAL_S = round(defaults.INTERVAL_S)  # --interval: attribution every 5 minutes (whole seconds on the dashboard)
LAG_WARN_S = 120  # FirehoseLagHigh
DECODE_ERROR_RATIO = 0.01  # DecodeErrorsHigh
# Runs come every INTERVAL_S, so the attribution panels look at a window holding several of them.
RUN_WINDOW = "30m"

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'job=~"$job", instance=~"$instance"'
SEL_IND = f'{SEL}, indicator=~"$indicator"'
RULES = Path(__file__).resolve().parents[1] / "prometheus" / "skyattr-rules.yaml"


def alert_names(rules: Path = RULES) -> list[str]:
    """The alerts of the Prometheus rule file, in file order (the annotations and the alert count show them)."""
    groups = yaml.safe_load(rules.read_text(encoding="utf-8"))["groups"]
    names = [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]
    return list(dict.fromkeys(names))


ALERT_NAMES = "|".join(alert_names())


def q(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False) -> Dataquery:
    query = Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)
    return query.instant() if instant else query.range()


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def ts(title: str, description: str, *queries: Dataquery, unit: str = "short", w: int = 12, h: int = 8) -> Any:
    """A time series panel with the dashboard's common settings."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(h)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def threshold_line(panel: Any, value: float, color: str = "red") -> Any:
    """Draw ``value`` as a dashed horizontal line (series keep the palette colours)."""
    return (
        panel.thresholds(thresholds((None, "transparent"), (value, color)))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
    )


def single(title: str, description: str, expr: str, *, unit: str = "short", steps: Any = None, w: int = 3) -> Any:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(w)
        .height(4)
        .with_target(q(expr, instant=True))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .graph_mode(cm.BigValueGraphMode.NONE)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
    )
    return panel.thresholds(thresholds(*(steps or ((None, "blue"),))))  # informational: one colour


def dashed(name_regex: str) -> tuple[dm.MatcherConfig, list[dm.DynamicConfigValue]]:
    return dm.MatcherConfig(id_val="byRegexp", options=name_regex), [
        dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]})
    ]


def color(name_regex: str, fixed: str) -> tuple[dm.MatcherConfig, list[dm.DynamicConfigValue]]:
    return dm.MatcherConfig(id_val="byRegexp", options=name_regex), [
        dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": fixed})
    ]


def overrides(*rules: tuple[dm.MatcherConfig, list[dm.DynamicConfigValue]]) -> list[Any]:
    """A panel's field overrides from (matcher, properties) pairs."""
    return [db.DashboardFieldConfigSourceOverrides().matcher(m).properties(p) for m, p in rules]


def right_axis(ref: str) -> tuple[dm.MatcherConfig, list[dm.DynamicConfigValue]]:
    return dm.MatcherConfig(id_val="byFrameRefID", options=ref), [
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right")
    ]


def variables() -> list[Any]:
    def query_var(name: str, label: str, query: str, description: str) -> Any:
        return (
            db.QueryVariable(name)
            .id(name)
            .label(label)
            .description(description)
            .datasource(DS)
            .query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )

    return [
        db.DatasourceVariable("datasource")
        .id("datasource")
        .label("Data source")
        .description("The Prometheus that scrapes skyattr's /metrics.")
        .type("prometheus"),
        query_var("job", "Job", "label_values(skyattr_agents, job)", "Scrape job(s) of the skyattr daemons."),
        query_var("instance", "Instance", 'label_values(skyattr_agents{job=~"$job"}, instance)', "skyattr daemon(s)."),
        query_var(
            "indicator",
            "Indicator",
            f"label_values(skyattr_tier_share{{{SEL}}}, indicator)",
            "Macro indicator (--indicator) of the attribution.",
        ),
    ]


def annotations() -> list[Any]:
    return [
        db.AnnotationQuery()
        .name("Prometheus alerts")
        .datasource(DS)
        .enable(True)
        .icon_color("red")
        .expr(f'ALERTS{{alertstate="firing", alertname=~"{ALERT_NAMES}", {SEL}}}'),
        db.AnnotationQuery()
        .name("Scale-bias alert (daemon)")
        .datasource(DS)
        .enable(True)
        .icon_color("orange")
        .expr(f"skyattr_scale_bias_alert{{{SEL_IND}}} == 1"),
    ]


# The SDK's AnnotationQuery has no fields for the Prometheus-specific annotation options; they are added to its
# JSON (what Grafana's annotation editor writes for a Prometheus query).
ANNOTATION_EXTRAS = {
    "Prometheus alerts": {
        "titleFormat": "{{alertname}}",
        "textFormat": "{{instance}} {{indicator}} severity={{severity}}",
        "tagKeys": "alertname,severity",
        "step": "60s",
        "useValueForTime": False,
    },
    "Scale-bias alert (daemon)": {
        "titleFormat": "scale-bias alert firing ({{indicator}})",
        "textFormat": "{{instance}}: tier shares of the panel study differ from the full population",
        "tagKeys": "indicator",
        "step": "60s",
        "useValueForTime": False,
    },
}


def overview() -> list[Any]:
    return [
        single(
            "Newest event",
            "Event time of the newest event applied (skyattr_event_time_seconds).",
            f"max(skyattr_event_time_seconds{{{SEL}}}) * 1000",
            unit="dateTimeAsIso",
            w=3,
        ),
        single(
            "Agents tracked",
            "Agents interned in the state (skyattr_agents).",
            f"sum(skyattr_agents{{{SEL}}})",
            w=3,
        ),
        single(
            "Scale-bias alert (daemon)",
            "skyattr_scale_bias_alert: the daemon's own alert, with hysteresis (1 = firing).",
            f"max(skyattr_scale_bias_alert{{{SEL_IND}}})",
            steps=((None, "green"), (1, "red")),
        ).mappings(
            [
                dm.ValueMap(
                    options={
                        "0": dm.ValueMappingResult(text="OK", color="green", index=0),
                        "1": dm.ValueMappingResult(text="FIRING", color="red", index=1),
                    }
                )
            ]
        ),
        single(
            "Panel share (coverage)",
            f"The panel's accounts' share of the full-scale attribution. Alert below {TAU_COVERAGE}.",
            f"min(skyattr_scale_bias_panel_share{{{SEL_IND}}})",
            unit="none",
            steps=((None, "red"), (TAU_COVERAGE, "green")),
        ).decimals(3),
        single(
            "Same-game residual r*",
            f"What no rescaling of the panel study (same game, only the panel active) removes. Alert above {TAU_RES}.",
            f'max(skyattr_scale_bias_residual{{{SEL_IND}, game="same_game"}})',
            unit="none",
            steps=((None, "green"), (TAU_RES, "red")),
        ).decimals(3),
        single(
            "Since last successful run",
            f"Wall time since the last successful attribution (runs every {INTERVAL_S} s by default).",
            f"time() - max(skyattr_attribution_last_success_timestamp_seconds{{{SEL}}} > 0)",
            unit="s",
            steps=((None, "green"), (2 * INTERVAL_S, "orange"), (3 * INTERVAL_S, "red")),
        ),
        single(
            "Event lag",
            "Wall clock minus the event time of the newest event applied.",
            f"max(skyattr_event_lag_seconds{{{SEL}}})",
            unit="s",
            steps=((None, "green"), (LAG_WARN_S, "red")),
        ),
        single(
            "Prometheus alerts firing",
            "Alerts of ops/prometheus/skyattr-rules.yaml firing for these daemons (ALERTS series).",
            f'count(ALERTS{{alertstate="firing", alertname=~"{ALERT_NAMES}", {SEL}}}) or vector(0)',
            steps=((None, "green"), (1, "red")),
        ),
    ]


def ingest() -> list[Any]:
    rate = "[$__rate_interval]"
    decode_ratio = (
        f"sum(rate(skyattr_decode_errors_total{{{SEL}}}{rate}))"
        f" / (sum(rate(skyattr_decode_errors_total{{{SEL}}}{rate}))"
        f" + sum(rate(skyattr_ingest_frames_total{{{SEL}}}{rate})))"
    )
    return [
        ts(
            "Ingest rate by kind",
            "Normalized events applied to the state per second, by kind (skyattr_ingest_events_total).",
            q(f"sum by (kind) (rate(skyattr_ingest_events_total{{{SEL}}}{rate}))", "{{kind}}"),
            unit="eps",
        ),
        ts(
            "Frames by type",
            "Relay frames (or archive items) decoded per second, by type (skyattr_ingest_frames_total).",
            q(f"sum by (type) (rate(skyattr_ingest_frames_total{{{SEL}}}{rate}))", "{{type}}"),
            unit="cps",
        ),
        threshold_line(
            ts(
                "Event lag",
                f"Wall clock minus the event time of the newest event. FirehoseLagHigh above {LAG_WARN_S} s.",
                q(f"skyattr_event_lag_seconds{{{SEL}}}", "{{instance}}"),
                unit="s",
                w=8,
            ),
            LAG_WARN_S,
        ),
        ts(
            "Relay reconnects and re-sent frames",
            "Reconnections to the relay, frames at or below the cursor (re-sent after a reconnect, ignored), and "
            "whether the relay websocket is open (1/0, live mode).",
            q(
                f"sum by (instance) (increase(skyattr_source_reconnects_total{{{SEL}}}{rate}))",
                "reconnects {{instance}}",
            ),
            q(
                f"sum by (instance) (increase(skyattr_duplicate_frames_total{{{SEL}}}{rate}))",
                "duplicate frames {{instance}}",
                "B",
            ),
            q(f"max by (instance) (skyattr_source_connected{{{SEL}}})", "connected {{instance}}", "C"),
            w=8,
        ).overrides(overrides(right_axis("B"))),
        ts(
            "Decode errors",
            "Items that could not be decoded per second, by reason (skyattr_decode_errors_total).",
            q(f"sum by (reason) (rate(skyattr_decode_errors_total{{{SEL}}}{rate}))", "{{reason}}"),
            unit="cps",
            w=8,
        ),
        threshold_line(
            ts(
                "Undecodable share",
                f"errors / (errors + frames). DecodeErrorsHigh above {DECODE_ERROR_RATIO:.0%} for 10 minutes.",
                q(decode_ratio, "undecodable"),
                unit="percentunit",
                w=8,
            ),
            DECODE_ERROR_RATIO,
        ),
        ts(
            "Skipped repo operations",
            "Operations inside good frames that were skipped, by reason (skyattr_skipped_ops_total).",
            q(f"sum by (reason) (rate(skyattr_skipped_ops_total{{{SEL}}}{rate}))", "{{reason}}"),
            unit="cps",
            w=8,
        ),
        ts(
            "Relay cursor",
            "Last relay seq applied to the state (FirehoseDisconnected when it stands still for 5 minutes).",
            q(f"skyattr_source_cursor_seq{{{SEL}}}", "{{instance}}"),
            unit="none",
            w=8,
        ),
        ts(
            "Relay sequence anomalies",
            "Seq jumps (gaps) and the seqs they skipped, late frames kept (out of order), relay sequence restarts "
            "followed (resets, FutureCursor after a relay restart included), and 1 for a minute after any of them.",
            q(f"sum by (instance) (increase(skyattr_seq_gaps_total{{{SEL}}}{rate}))", "gaps {{instance}}"),
            q(
                f"sum by (instance) (increase(skyattr_seq_gap_frames_total{{{SEL}}}{rate}))",
                "seqs skipped {{instance}}",
                "B",
            ),
            q(
                f"sum by (instance) (increase(skyattr_seq_out_of_order_total{{{SEL}}}{rate}))",
                "out of order {{instance}}",
                "C",
            ),
            q(f"sum by (instance) (increase(skyattr_seq_resets_total{{{SEL}}}{rate}))", "resets {{instance}}", "D"),
            q(f"max by (instance) (skyattr_source_seq_anomaly{{{SEL}}})", "anomaly {{instance}}", "E"),
            w=8,
        ).overrides(overrides(right_axis("B"))),
    ]


def state() -> list[Any]:
    return [
        ts(
            "Agents and edges tracked",
            "Agents interned, agents active in the window, and attention edges in the window (right axis).",
            q(f"skyattr_agents{{{SEL}}}", "agents {{instance}}"),
            q(f"skyattr_active_agents{{{SEL}}}", "active agents {{instance}}", "B"),
            q(f"skyattr_edges{{{SEL}}}", "edges {{instance}}", "C"),
        ).overrides(overrides(right_axis("C"))),
        ts(
            "Indicator value v(x)",
            "The macro indicator over the window, at the last run.",
            q(f"skyattr_indicator_value{{{SEL_IND}}}", "{{indicator}} {{instance}}"),
            w=6,
        ),
        ts(
            "Sink errors",
            "Results a sink failed on, by sink (skyattr_sink_errors_total): logged; the other sinks still got them.",
            q(f"sum by (sink) (increase(skyattr_sink_errors_total{{{SEL}}}[$__rate_interval]))", "{{sink}}"),
            w=6,
        ),
        ts(
            "Checkpoints",
            "Checkpoints written, by outcome (skyattr_checkpoints_total).",
            q(f"sum by (outcome) (increase(skyattr_checkpoints_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}"),
            w=6,
        ).overrides(overrides(color("failed", "red"))),
        ts(
            "Deletes taken back",
            "Record deletes per second by outcome (skyattr_deletes_total): applied, what the create added taken back; "
            "unmatched, the record was not in the window's index (created before it, or beyond the record budget). "
            "Right axis: the records a delete can take back now (skyattr_record_index, 17 bytes each).",
            q(f"sum by (outcome) (rate(skyattr_deletes_total{{{SEL}}}[$__rate_interval]))", "{{outcome}}"),
            q(f"sum by (instance) (skyattr_record_index{{{SEL}}})", "record index {{instance}}", "B"),
            w=6,
        ).overrides(overrides(right_axis("B"))),
    ]


def attribution() -> list[Any]:
    bucket = f"skyattr_attribution_duration_seconds_bucket{{{SEL_IND}}}"
    quantiles = [
        q(f"histogram_quantile({p}, sum by (le) (rate({bucket}[{RUN_WINDOW}])))", f"p{round(p * 100)}", ref)
        for p, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]
    mean = (
        f"sum(rate(skyattr_attribution_duration_seconds_sum{{{SEL_IND}}}[{RUN_WINDOW}]))"
        f" / sum(rate(skyattr_attribution_duration_seconds_count{{{SEL_IND}}}[{RUN_WINDOW}]))"
    )
    return [
        ts(
            "Tier shares: full population vs panel study",
            "Share of the attribution per tier (head/middle/tail). Solid: the full population; dashed: the "
            "visibility-biased panel of the most-followed accounts, in the restricted game (the panel alone) and the "
            "same game (the full game, only the panel active).",
            q(f"skyattr_tier_share{{{SEL_IND}}}", "{{tier}} · {{scale}}"),
            unit="percentunit",
            h=9,
        )
        .min(0)
        .max(1)
        .overrides(overrides(dashed(".*· (restricted|same_game)"))),
        ts(
            "Rescaling c* and tier-share TVD per panel game",
            "c*: the best rescaling of the panel study (1 where the same game is exact); TVD: the tier-share total "
            "variation distance, full vs panel, which decides nothing (1 − the full head share once the panel lies "
            "in the head tier).",
            q(f"skyattr_scale_bias_rescale{{{SEL_IND}}}", "c* {{game}} {{indicator}}"),
            q(f"skyattr_scale_bias_tvd{{{SEL_IND}}}", "TVD {{game}} {{indicator}}", "B"),
            unit="none",
            w=6,
            h=9,
        ),
        threshold_line(
            ts(
                "Residual r* per panel game",
                f"The gap no rescaling of the panel study removes. The daemon alerts when the same game's is above "
                f"{TAU_RES} (--tau-res); the restricted game's adds the attention the rest pays the panel.",
                q(f"skyattr_scale_bias_residual{{{SEL_IND}}}", "r* {{game}} {{indicator}}"),
                unit="none",
                w=6,
                h=9,
            ).min(0),
            TAU_RES,
        ),
        ts(
            "Attribution duration",
            f"Wall time of one run (full + panel), quantiles and mean over {RUN_WINDOW}.",
            *quantiles,
            q(mean, "mean", "D"),
            unit="s",
            w=8,
        ),
        ts(
            "Attribution runs",
            "Runs by outcome: ok, skipped (empty window), failed (skyattr_attribution_runs_total).",
            q(f"sum by (outcome) (increase(skyattr_attribution_runs_total{{{SEL}}}[{RUN_WINDOW}]))", "{{outcome}}"),
            w=8,
        ).overrides(overrides(color("failed", "red"), color("skipped", "orange"), color("ok", "green"))),
        threshold_line(
            ts(
                "Since last successful run",
                f"AttributionStale after 3 intervals ({3 * INTERVAL_S} s at the default --interval).",
                q(
                    f"time() - (skyattr_attribution_last_success_timestamp_seconds{{{SEL}}} > 0)",
                    "{{instance}}",
                ),
                unit="s",
                w=8,
            ),
            3 * INTERVAL_S,
        ),
        ts(
            "Completeness residual and quadrature error estimate",
            "Efficiency residual of the path integral |Σφ − (v(x) − v(0))|, relative (quadrature errors cancel in "
            "the sum: no error bar), and the error estimate of φ itself, ‖φ_m − φ_2m‖ / ‖φ_2m‖ (raise --nodes when "
            "it is large).",
            q(f"skyattr_completeness_residual{{{SEL_IND}}}", "residual {{indicator}} {{instance}}"),
            q(f"skyattr_attribution_error_estimate{{{SEL_IND}}}", "error estimate {{indicator}} {{instance}}", "B"),
            unit="sci",
            w=8,
        ),
        threshold_line(
            ts(
                "Panel's share of the attribution (coverage)",
                f"The share of the full attribution that falls on the panel accounts. The daemon alerts below "
                f"{TAU_COVERAGE} (--tau-coverage).",
                q(f"skyattr_scale_bias_panel_share{{{SEL_IND}}}", "{{indicator}} {{instance}}"),
                unit="percentunit",
                w=8,
            ).min(0),
            TAU_COVERAGE,
        ),
        ts(
            "Scale-bias alert state (daemon)",
            "skyattr_scale_bias_alert: 1 while the daemon's hysteresis alert fires (also on Kafka skyattr.alerts).",
            q(f"skyattr_scale_bias_alert{{{SEL_IND}}}", "{{indicator}} {{instance}}"),
            q(f"skyattr_scale_bias_criterion{{{SEL_IND}}}", "{{criterion}} past its threshold {{indicator}}", "B"),
            unit="none",
            w=8,
        )
        .min(0)
        .max(1),
        ts(
            "The panel a small study should use (stratified)",
            "The smallest stratified random sample of the active accounts (strata: the tiers, Neyman allocation) "
            "whose weighted tier shares are within --stratified-epsilon of the full scale, and how many accounts it "
            "draws from each tier. A lower bound: it assumes each sampled account's full-scale φ is measured "
            "exactly. No line: none of the sizes tried meets ε.",
            q(f"skyattr_stratified_panel_size{{{SEL_IND}}}", "size {{indicator}} {{instance}}"),
            q(f"skyattr_stratified_panel_accounts{{{SEL_IND}}}", "{{tier}} {{indicator}} {{instance}}", "B"),
            unit="none",
            w=12,
        ).min(0),
        ts(
            "Stratified panel: sampling weights",
            "The weight of each tier's sampled accounts in the stratified panel's estimate: the accounts of its "
            "tier each one stands for (N_h / n_h, Horvitz–Thompson).",
            q(f"skyattr_stratified_panel_weight{{{SEL_IND}}}", "{{tier}} {{indicator}} {{instance}}"),
            unit="none",
            w=12,
        ).min(0),
    ]


def kafka() -> list[Any]:
    return [
        ts(
            "Kafka messages by outcome",
            "sent; failed (retried); dropped (buffer full, lost for Kafka consumers). skyattr_kafka_messages_total.",
            q(
                f"sum by (topic, outcome) (increase(skyattr_kafka_messages_total{{{SEL}}}[$__rate_interval]))",
                "{{outcome}} {{topic}}",
            ),
        ).overrides(overrides(color("sent.*", "green"), color("failed.*", "orange"), color("dropped.*", "red"))),
        ts(
            "Kafka buffer and repeated results",
            "Results waiting for the broker (bounded by --kafka-buffer; beyond it the oldest are dropped; with a "
            "checkpoint directory they stay in its journal), and results computed again after a restart whose "
            "identity was already delivered, so not sent again (skyattr_results_repeated_total).",
            q(f"skyattr_kafka_buffered{{{SEL}}}", "buffered {{instance}}"),
            q(
                f"sum by (instance) (increase(skyattr_results_repeated_total{{{SEL}}}[$__rate_interval]))",
                "repeated {{instance}}",
                "B",
            ),
        ),
    ]


def distributed() -> list[Any]:
    """The roles of the distributed mode (skyattr worker / attributor, their --metrics-port)."""
    rate = "[$__rate_interval]"
    return [
        ts(
            "Workers: consumer lag per partition",
            "Records of each events partition not folded yet (high watermark minus the next offset to fold; a "
            "caught-up partition shows 1, the commit marker of ingest's last transaction). Alert: "
            "WorkerConsumerLagHigh. skyattr_worker_consumer_lag.",
            q(f"max by (partition) (skyattr_worker_consumer_lag{{{SEL}}})", "partition {{partition}}"),
        ),
        ts(
            "Workers: changelog recovery",
            "Changelog records still to read per partition while a worker recovers its state table (after a "
            "rebalance or a start without its disk), and the workers in recovery. Alert: WorkerStuckInRecovery. "
            "skyattr_worker_recovery_remaining, skyattr_worker_in_recovery.",
            q(f"max by (partition) (skyattr_worker_recovery_remaining{{{SEL}}})", "remaining, partition {{partition}}"),
            q(f"sum(skyattr_worker_in_recovery{{{SEL}}})", "workers in recovery", "B"),
        ).overrides(overrides(right_axis("B"))),
        ts(
            "Workers: records folded and partitions held",
            "Records read per second by each worker (folded or refused; refused ones are named in its log; early: "
            "delivered ahead of their turn after a rebalance, folded when delivered again) and the partitions each "
            "holds. skyattr_worker_events_total, skyattr_worker_refused_total, skyattr_worker_early_total, "
            "skyattr_worker_assigned_partitions.",
            q(f"sum by (instance) (rate(skyattr_worker_events_total{{{SEL}}}{rate}))", "read/s {{instance}}"),
            q(f"sum by (instance) (rate(skyattr_worker_refused_total{{{SEL}}}{rate}))", "refused/s {{instance}}", "B"),
            q(f"skyattr_worker_assigned_partitions{{{SEL}}}", "partitions {{instance}}", "C"),
            q(f"sum by (instance) (rate(skyattr_worker_early_total{{{SEL}}}{rate}))", "early/s {{instance}}", "D"),
        ).overrides(overrides(right_axis("C"))),
        ts(
            "Workers: shards published",
            "Shards per second and their compressed bytes per second (one shard per partition and run), and the "
            "90th percentile of a shard's publish time (tick to the broker's acknowledgement). "
            "skyattr_worker_shards_total, skyattr_worker_shard_bytes_total, skyattr_worker_shard_publish_seconds.",
            q(f"sum(rate(skyattr_worker_shards_total{{{SEL}}}{rate}))", "shards/s"),
            q(f"sum(rate(skyattr_worker_shard_bytes_total{{{SEL}}}{rate}))", "bytes/s", "B"),
            q(
                "histogram_quantile(0.9, sum by (le) "
                f"(rate(skyattr_worker_shard_publish_seconds_bucket{{{SEL}}}[30m])))",
                "publish p90 (s)",
                "C",
            ),
        ).overrides(overrides(right_axis("B"))),
        ts(
            "Attributor: runs by outcome",
            "Runs the attributor published (ok), had nothing to attribute (skipped), or gave up after "
            "--gather-timeout because a partition's shard never came (incomplete, named in its log). Alert: "
            "AttributorRunsIncomplete. skyattr_attributor_runs_total.",
            q(
                f"sum by (outcome) (increase(skyattr_attributor_runs_total{{{SEL}}}[30m]))",
                "{{outcome}}",
            ),
        ).overrides(overrides(color("ok", "green"), color("skipped", "yellow"), color("incomplete", "red"))),
        ts(
            "Attributor: shard gather time",
            "From the first chunk of a run's shards to its last (the slowest worker sets it), median and 90th "
            "percentile over 30 minutes. skyattr_attributor_gather_seconds.",
            *[
                q(
                    f"histogram_quantile({p}, sum by (le) "
                    f"(rate(skyattr_attributor_gather_seconds_bucket{{{SEL}}}[30m])))",
                    f"p{round(p * 100)}",
                    ref,
                )
                for p, ref in ((0.5, "A"), (0.9, "B"))
            ],
            unit="s",
        ),
        ts(
            "Roles: Kafka broker reached",
            "1 while a role (ingest --to-kafka, attributor) has its broker, 0 before it is first reached and during "
            "an outage, when the role is unready and waits for it (it resumes by itself). Alert: KafkaUnreachable. "
            "skyattr_kafka_connected.",
            q(f"min by (instance) (skyattr_kafka_connected{{{SEL}}})", "{{instance}}"),
        )
        .min(0)
        .max(1),
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    dash = (
        db.Dashboard("skyattr")
        .uid(UID)
        .description(
            "skyattr daemon: firehose ingest, rolling state, Aumann–Shapley attribution, scale bias of a panel "
            "study, Kafka. Generated by ops/grafana/dashboard.py; do not edit by hand."
        )
        .tags(["skyattr", "bluesky", "prometheus"])
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .variables(variables())
        .annotations(annotations())
    )
    for title, panels in (
        ("Overview", overview()),
        ("Firehose ingest", ingest()),
        ("State", state()),
        ("Attribution and scale bias", attribution()),
        ("Kafka", kafka()),
        ("Distributed mode: workers and attributor", distributed()),
    ):
        dash = dash.with_row(db.Row(title))
        for panel in panels:
            dash = dash.with_panel(panel)
    model: dict[str, Any] = json.loads(json.dumps(dash.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):  # ids in reading order
        panel["id"] = number
    for annotation in model["annotations"]["list"]:
        annotation.update(ANNOTATION_EXTRAS[annotation["name"]])
    return model


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help=f"exit 1 if {OUT.name} differs from what is generated")
    group.add_argument("--stdout", action="store_true", help="print the JSON instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
    elif args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python ops/grafana/dashboard.py", file=sys.stderr)
            return 1
        print(f"{OUT.name} is up to date")
    else:
        OUT.write_text(text, encoding="utf-8")
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
