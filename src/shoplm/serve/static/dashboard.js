// The dashboard: engine versions with their manifests and offline metrics, the live
// request metrics (polled from /metrics), the A/B report, and the deployment history
// with a rollback (admin key) followed by a reload of the running engine.

import {
  ApiError,
  apiKey,
  fill,
  formatDate,
  formatNumber,
  getJSON,
  getText,
  h,
  postJSON,
  settingsDialog,
  toast,
} from "./api.js";
import { parseMetrics, routeStats } from "./prom.js";

const POLL_SECONDS = 5;
const SPARK_POINTS = 60;

const $ = (id) => document.getElementById(id);
let versionsData = null;

function table(headers, rows, caption) {
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", { class: "visually-hidden" }, caption),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          headers.map((name) => h("th", { scope: "col" }, name)),
        ),
      ),
      h("tbody", {}, rows),
    ),
  );
}

function problem(error) {
  return h(
    "p",
    { class: "error", role: "alert" },
    error instanceof ApiError ? error.message : String(error),
  );
}

// ---------------------------------------------------------------- versions
function versionRow(v) {
  const c = v.counts || {};
  const val = v.validation;
  const components = Object.entries(v.components || {}).map(([part, stages]) =>
    h("div", {}, h("strong", {}, `${part}: `), stages.join(", ")),
  );
  const metrics = Object.entries(flatten(v.metrics || {}));
  return h(
    "tr",
    { dataset: { version: v.version } },
    h(
      "th",
      { scope: "row" },
      h("code", {}, v.version),
      v.current ? h("span", { class: "tag ok" }, "current") : null,
      v.serving ? h("span", { class: "tag info" }, "serving") : null,
    ),
    h("td", {}, formatDate(v.created_at), h("div", { class: "muted small" }, v.created_by || "")),
    h("td", { class: "num" }, formatNumber(c.items)),
    h("td", { class: "num" }, formatNumber(c.users)),
    h("td", { class: "num" }, formatNumber(c.events)),
    h("td", { class: "num" }, formatNumber(v.build_seconds)),
    h("td", {}, components),
    h(
      "td",
      {},
      `${formatNumber(val.rows_kept)} of ${formatNumber(val.rows_read)} rows kept`,
      h(
        "div",
        { class: val.errors ? "small warn-text" : "muted small" },
        `${formatNumber(val.errors)} errors, ${formatNumber(val.warnings)} warnings`,
      ),
    ),
    h(
      "td",
      {},
      metrics.length
        ? h(
            "dl",
            { class: "compact" },
            metrics.map(([k, value]) => [h("dt", {}, k), h("dd", {}, formatNumber(value))]),
          )
        : h("span", { class: "muted" }, "–"),
    ),
  );
}

/** Nested metric objects as "search.ndcg@10" → number; only numbers are kept. */
function flatten(object, prefix = "") {
  const out = {};
  for (const [key, value] of Object.entries(object)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (typeof value === "number") out[name] = value;
    else if (value && typeof value === "object" && !Array.isArray(value))
      Object.assign(out, flatten(value, name));
  }
  return out;
}

async function loadVersions() {
  try {
    versionsData = await getJSON("/console/api/versions");
  } catch (error) {
    fill($("versions-body"), problem(error));
    return;
  }
  const { versions, current, serving, unreadable } = versionsData;
  $("versions-body").removeAttribute("aria-busy");
  fill(
    $("versions-body"),
    h(
      "p",
      { class: "muted" },
      `${versions.length} version${versions.length === 1 ? "" : "s"}; current: ${current || "none"}; this process serves ${serving}.`,
    ),
    unreadable.length
      ? h("p", { class: "error" }, `Manifests that could not be read: ${unreadable.join(", ")}`)
      : null,
    table(
      [
        "Version",
        "Created",
        "Items",
        "Users",
        "Events",
        "Build s",
        "Components",
        "Validation",
        "Metrics",
      ],
      versions.map(versionRow),
      "Engine versions, newest first",
    ),
  );
  fill($("evaluation-body"), evaluation(versions));
  const select = $("rollback-version");
  fill(
    select,
    ...versions.map((v) =>
      h(
        "option",
        { value: v.version, disabled: v.current },
        `${v.version}${v.current ? " (current)" : ""} – ${formatDate(v.created_at)}`,
      ),
    ),
  );
  const firstOther = versions.find((v) => !v.current);
  if (firstOther) select.value = firstOther.version;
}

// ---------------------------------------------------------------- offline evaluation
function evaluation(versions) {
  const oldestFirst = [...versions].reverse();
  const perVersion = oldestFirst.map((v) => flatten(v.metrics || {}));
  const names = [...new Set(perVersion.flatMap((m) => Object.keys(m)))].sort();
  if (!names.length) {
    return h(
      "p",
      { class: "muted" },
      "No version records offline metrics yet: an evaluated build (shoplm deploy) writes them into its manifest.",
    );
  }
  return h(
    "div",
    {},
    table(
      ["Metric", ...oldestFirst.map((v) => v.version)],
      names.map((name) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, name),
          perVersion.map((m) => h("td", { class: "num" }, formatNumber(m[name]))),
        ),
      ),
      "Offline metrics per version",
    ),
    h(
      "div",
      { class: "charts" },
      names.map((name) =>
        barChart(
          name,
          oldestFirst.map((v, i) => [v.version, perVersion[i][name], v.current]),
        ),
      ),
    ),
  );
}

/** A small bar chart of one metric across versions (the current one highlighted). */
function barChart(title, points) {
  const known = points.filter(([, value]) => typeof value === "number");
  const top = Math.max(...known.map(([, value]) => Math.abs(value)), 1e-12);
  const width = 260;
  const barHeight = 18;
  const label = 64;
  const height = points.length * (barHeight + 6) + 4;
  return h(
    "figure",
    { class: "chart" },
    h(
      "svg",
      {
        viewBox: `0 0 ${width} ${height}`,
        width,
        height,
        role: "img",
        "aria-label": `${title} by version`,
      },
      points.map(([version, value, current], i) => {
        const y = 4 + i * (barHeight + 6);
        const length =
          typeof value === "number" ? (Math.abs(value) / top) * (width - label - 60) : 0;
        return h(
          "g",
          {},
          h("text", { x: 0, y: y + 13, class: "chart-label" }, version),
          h("rect", {
            x: label,
            y,
            width: Math.max(length, 1),
            height: barHeight,
            class: current ? "bar current" : "bar",
          }),
          h(
            "text",
            { x: label + length + 4, y: y + 13, class: "chart-value" },
            formatNumber(value),
          ),
        );
      }),
    ),
    h("figcaption", {}, title),
  );
}

// ---------------------------------------------------------------- live metrics
const history = [];
let previous = null;
let paused = false;

function ms(seconds) {
  return seconds === null || seconds === undefined ? "–" : `${formatNumber(seconds * 1000)} ms`;
}

async function pollMetrics() {
  if (paused) return;
  let samples;
  try {
    samples = parseMetrics(await getText("/metrics"));
  } catch (error) {
    fill($("live-body"), problem(error));
    return;
  }
  const now = performance.now();
  const routes = routeStats(samples);
  const total = routes.reduce((sum, r) => sum + r.requests, 0);
  if (previous) {
    history.push(Math.max(0, (total - previous.total) / ((now - previous.now) / 1000)));
    if (history.length > SPARK_POINTS) history.shift();
  }
  previous = { total, now };
  const info = samples.find((s) => s.name === "shoplm_engine_info");
  const others = samples.filter(
    (s) =>
      s.name.startsWith("shoplm_") &&
      !s.name.startsWith("shoplm_http_") &&
      !s.name.endsWith("_created") &&
      s.name !== "shoplm_engine_info",
  );
  $("live-updated").textContent =
    `updated ${new Date().toLocaleTimeString()}, every ${POLL_SECONDS} s`;
  fill(
    $("live-body"),
    h(
      "div",
      { class: "stats" },
      stat("Engine", info ? info.labels.engine_version : "–"),
      stat("Requests", formatNumber(total)),
      stat("Requests/s", history.length ? formatNumber(history[history.length - 1]) : "–"),
      stat("Server errors", formatNumber(routes.reduce((sum, r) => sum + r.serverErrors, 0))),
      h(
        "div",
        { class: "stat" },
        h("span", { class: "muted small" }, `Requests/s, last ${SPARK_POINTS} polls`),
        sparkline(history),
      ),
    ),
    table(
      ["Route", "Method", "Requests", "4xx", "5xx", "p50", "p99"],
      routes.map((r) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, h("code", {}, r.route)),
          h("td", {}, r.method),
          h("td", { class: "num" }, formatNumber(r.requests)),
          h("td", { class: "num" }, formatNumber(r.clientErrors)),
          h("td", { class: "num" }, formatNumber(r.serverErrors)),
          h("td", { class: "num" }, ms(r.p50)),
          h("td", { class: "num" }, ms(r.p99)),
        ),
      ),
      "Requests and latency by route",
    ),
    others.length
      ? table(
          ["Metric", "Labels", "Value"],
          others.map((s) =>
            h(
              "tr",
              {},
              h("th", { scope: "row" }, h("code", {}, s.name)),
              h(
                "td",
                {},
                Object.entries(s.labels)
                  .map(([k, v]) => `${k}=${v}`)
                  .join(", "),
              ),
              h("td", { class: "num" }, formatNumber(s.value)),
            ),
          ),
          "Other service metrics",
        )
      : null,
  );
}

function stat(label, value) {
  return h(
    "div",
    { class: "stat" },
    h("span", { class: "muted small" }, label),
    h("strong", {}, value),
  );
}

function sparkline(values) {
  const width = 180;
  const height = 36;
  const top = Math.max(...values, 1e-9);
  const step = width / Math.max(SPARK_POINTS - 1, 1);
  const points = values.map(
    (v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / top) * (height - 4)).toFixed(1)}`,
  );
  return h(
    "svg",
    {
      viewBox: `0 0 ${width} ${height}`,
      width,
      height,
      class: "spark",
      role: "img",
      "aria-label": "requests per second over time",
    },
    h("polyline", { points: points.join(" ") }),
  );
}

// ---------------------------------------------------------------- A/B report
const METRIC_NAMES = { ctr: "CTR", conversion: "Conversion", revenue_per_user: "Revenue / user" };
const VERDICT_TAGS = { better: "ok", worse: "bad", srm: "bad", no_difference: "info" };
const PERCENT = new Intl.NumberFormat(undefined, {
  style: "percent",
  minimumFractionDigits: 1,
  maximumFractionDigits: 2,
});

function percent(value) {
  return typeof value === "number" ? PERCENT.format(value) : "–";
}

function pValue(p) {
  return typeof p === "number" && p < 0.001 ? "< 0.001" : formatNumber(p);
}

function isRecord(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** Any other JSON as readable HTML: objects as definition lists, lists of records as tables. */
function renderJSON(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return formatNumber(value);
  if (typeof value !== "object") return String(value);
  if (Array.isArray(value)) {
    if (value.length && value.every(isRecord)) {
      const columns = [...new Set(value.flatMap((r) => Object.keys(r)))];
      return table(
        columns,
        value.map((r) =>
          h(
            "tr",
            {},
            columns.map((c) => h("td", {}, renderJSON(r[c]))),
          ),
        ),
        "Report rows",
      );
    }
    return value.map((v) => (isRecord(v) ? JSON.stringify(v) : String(v))).join(", ");
  }
  return h(
    "dl",
    { class: "report" },
    Object.entries(value).map(([k, v]) => [h("dt", {}, k), h("dd", {}, renderJSON(v))]),
  );
}

/** The report `shoplm ab report` writes: variants, comparisons with lifts, SRM, verdict. */
function renderABReport(report) {
  const level = 1 - (report.alpha_per_comparison ?? report.alpha);
  const lifts = report.comparisons.flatMap((c) => c.metrics.map((m) => m.lift));
  return h(
    "div",
    { class: "ab-report" },
    h(
      "p",
      { class: "verdict" },
      h("strong", {}, report.experiment),
      h("span", { class: `tag ${VERDICT_TAGS[report.kind] || "info"}` }, report.verdict),
    ),
    h(
      "dl",
      { class: "report" },
      h("dt", {}, "Primary metric"),
      h("dd", {}, METRIC_NAMES[report.primary_metric] || report.primary_metric),
      h("dt", {}, "Significance"),
      h("dd", {}, `α = ${formatNumber(report.alpha)}, ${percent(level)} intervals`),
      h("dt", {}, "Power, smallest lift"),
      h("dd", {}, `${percent(report.power)}, ${percent(report.minimum_detectable_effect)}`),
      h("dt", {}, "Users needed per variant"),
      h("dd", {}, report.min_sample ? report.min_sample.map(formatNumber).join(" / ") : "–"),
      report.srm
        ? [
            h("dt", {}, "Sample ratio"),
            h(
              "dd",
              { class: report.srm.flagged ? "error" : null },
              `${report.srm.observed.map(formatNumber).join(" / ")} users, p = ` +
                `${pValue(report.srm.p_value)}` +
                (report.srm.flagged ? ": mismatch, the split is broken" : ": as planned"),
            ),
          ]
        : null,
    ),
    table(
      [
        "Variant",
        "Share",
        "Users",
        "Exposures",
        "CTR",
        "Cart rate",
        "Conversion",
        "Revenue / user",
      ],
      report.variants.map((v) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, v.name),
          h("td", { class: "num" }, percent(v.share)),
          h("td", { class: "num" }, formatNumber(v.users)),
          h("td", { class: "num" }, formatNumber(v.exposures)),
          h("td", { class: "num" }, percent(v.ctr)),
          h("td", { class: "num" }, percent(v.cart_rate)),
          h("td", { class: "num" }, percent(v.conversion)),
          h("td", { class: "num" }, formatNumber(v.revenue_per_user)),
        ),
      ),
      "Variants",
    ),
    report.comparisons.map((c) =>
      h(
        "section",
        { class: "comparison" },
        h(
          "h3",
          {},
          `${c.treatment} vs ${c.control} `,
          h("span", { class: `tag ${VERDICT_TAGS[c.kind] || "info"}` }, c.verdict),
        ),
        table(
          [
            "Metric",
            c.control,
            c.treatment,
            "Relative lift",
            `${percent(level)} interval`,
            "p",
            "",
          ],
          c.metrics.map((m) =>
            h(
              "tr",
              { class: m.metric === report.primary_metric ? "primary" : null },
              h("th", { scope: "row" }, METRIC_NAMES[m.metric] || m.metric),
              h("td", { class: "num" }, formatNumber(m.control)),
              h("td", { class: "num" }, formatNumber(m.treatment)),
              h("td", { class: "num" }, percent(m.lift.estimate)),
              h("td", { class: "num" }, `${percent(m.lift.low)} to ${percent(m.lift.high)}`),
              h("td", { class: "num" }, pValue(m.test.p_value)),
              h("td", {}, intervalPlot(m.lift, lifts)),
            ),
          ),
          `${c.treatment} against ${c.control}`,
        ),
        h(
          "p",
          { class: "muted small" },
          "* primary metric. Lift is relative to the control; the dashed line marks no change.",
        ),
      ),
    ),
  );
}

/** One lift as a dot on its interval, on a scale shared by all lifts, zero dashed. */
function intervalPlot(lift, all) {
  const finite = all.flatMap((i) => [i.low, i.high]).filter((v) => typeof v === "number");
  if (typeof lift.low !== "number" || typeof lift.high !== "number") return "–";
  const low = Math.min(0, ...finite);
  const high = Math.max(0, ...finite);
  const width = 180;
  const x = (v) => 6 + ((v - low) / (high - low || 1)) * (width - 12);
  return h(
    "svg",
    {
      viewBox: `0 0 ${width} 18`,
      width,
      height: 18,
      role: "img",
      "aria-label": `lift ${percent(lift.estimate)}, from ${percent(lift.low)} to ${percent(lift.high)}`,
    },
    h("line", { x1: x(0), x2: x(0), y1: 0, y2: 18, class: "zero" }),
    h("line", { x1: x(lift.low), x2: x(lift.high), y1: 9, y2: 9, class: "interval" }),
    typeof lift.estimate === "number"
      ? h("circle", { cx: x(lift.estimate), cy: 9, r: 4, class: "estimate" })
      : null,
  );
}

async function loadExperiment() {
  const body = $("experiment-body");
  try {
    const found = await getJSON("/console/api/experiment");
    if (found.running && found.running.length) {
      // live reports from the service's own experiment log
      const reports = await Promise.all(
        found.running.map((name) => getJSON(`/experiments/${encodeURIComponent(name)}/report`)),
      );
      fill(
        body,
        reports.map((report) =>
          h(
            "div",
            { class: "live-report" },
            h("p", { class: "muted small" }, `Live: ${report.experiment}`),
            renderABReport(report),
          ),
        ),
      );
    } else if (found.error) fill(body, h("p", { class: "error" }, found.error));
    else if (!found.report) {
      fill(
        body,
        h("p", { class: "placeholder" }, "No experiment running."),
        h(
          "p",
          { class: "muted small" },
          `The A/B report appears here when ${found.source} is written.`,
        ),
      );
    } else {
      const report = found.report;
      const known = Array.isArray(report.variants) && Array.isArray(report.comparisons);
      fill(
        body,
        h("p", { class: "muted small" }, `From ${found.source}`),
        known ? renderABReport(report) : renderJSON(report),
      );
    }
  } catch (error) {
    fill(body, problem(error));
  }
}

// ---------------------------------------------------------------- monitoring
// Each chart is one metric over the chosen window, one line per series (route, variant).
const CHARTS = [
  ["p99_ms", "p99 latency (ms)"],
  ["p50_ms", "median latency (ms)"],
  ["error_rate", "5xx share"],
  ["requests_per_s", "requests / s"],
  ["events_per_s", "events / s"],
  ["event_lag_s", "event lag (s)"],
  ["index_items", "items in the index"],
  ["ctr", "clicks per served list"],
  ["conversion", "purchases per served list"],
];
const CHART_W = 320;
const CHART_H = 120;

function seriesName(labels) {
  const parts = Object.values(labels || {});
  return parts.length ? parts.join(" / ") : "all";
}

function lineChart(title, data) {
  const values = data.series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  const times = data.series.flatMap((s) => s.points.map((p) => p[0]));
  if (!values.length) {
    return h("figure", { class: "chart" }, h("figcaption", {}, title), h("p", { class: "muted small" }, "no data"));
  }
  const top = Math.max(...values) || 1;
  const t0 = Math.min(...times);
  const t1 = Math.max(...times);
  const x = (t) => 4 + ((t - t0) / Math.max(t1 - t0, 1)) * (CHART_W - 8);
  const y = (v) => CHART_H - 4 - (v / top) * (CHART_H - 18);
  const lines = data.series.map((s, i) => {
    // a gap in the data breaks the line instead of drawing through it
    const runs = [[]];
    for (const [t, v] of s.points) {
      if (v === null) runs.push([]);
      else runs[runs.length - 1].push(`${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    }
    return h(
      "g",
      { class: `series series-${i % 6}` },
      h("title", {}, seriesName(s.labels)),
      runs.filter((r) => r.length).map((r) =>
        r.length === 1
          ? h("circle", { cx: r[0].split(",")[0], cy: r[0].split(",")[1], r: 2 })
          : h("polyline", { points: r.join(" ") }),
      ),
    );
  });
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, title),
    h(
      "svg",
      { viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img", "aria-label": `${title} over time` },
      h("line", { x1: 0, x2: CHART_W, y1: CHART_H - 4, y2: CHART_H - 4, class: "axis" }),
      h("text", { x: 4, y: 11, class: "tick" }, formatNumber(top)),
      lines,
    ),
    h(
      "p",
      { class: "legend small" },
      data.series.map((s, i) => h("span", { class: `key series-${i % 6}` }, seriesName(s.labels))),
    ),
  );
}

async function loadAlerts() {
  const body = $("alerts-body");
  try {
    const { alerts } = await getJSON("/monitoring/alerts");
    fill(
      body,
      alerts.length
        ? table(
            ["Rule", "State", "Since", "Value"],
            alerts.map((a) =>
              h(
                "tr",
                { class: `alert-${a.state}` },
                h("td", {}, h("code", {}, a.name)),
                h("td", {}, h("span", { class: `badge state-${a.state}` }, a.state)),
                h("td", {}, formatDate(new Date(a.since * 1000).toISOString())),
                h("td", {}, a.value === null ? "–" : formatNumber(a.value)),
              ),
            ),
            "Alert rules and their states",
          )
        : h("p", { class: "muted" }, "No alert rules set (alert_rules or alerts_file in the service settings)."),
    );
  } catch (error) {
    fill(body, problem(error));
  }
}

async function loadCharts() {
  const body = $("charts-body");
  const window_ = $("monitoring-window").value;
  try {
    const all = await Promise.all(
      CHARTS.map(([metric]) =>
        getJSON(`/monitoring/series?metric=${encodeURIComponent(metric)}&window=${window_}`),
      ),
    );
    fill(
      body,
      all.map((data, i) => lineChart(CHARTS[i][1], data)),
    );
  } catch (error) {
    fill(body, problem(error));
  }
}

function pollMonitoring() {
  if (paused) return;
  loadAlerts();
  loadCharts();
}

// ---------------------------------------------------------------- deployments
async function loadDeployments() {
  const body = $("deployments-body");
  try {
    const { deployments, skipped_lines: skipped } = await getJSON("/console/api/deployments");
    fill(
      body,
      deployments.length
        ? table(
            ["When", "Action", "Version", "Replaced", "Key"],
            deployments.map((d) =>
              h(
                "tr",
                {},
                h("td", {}, formatDate(d.at)),
                h("td", {}, d.action),
                h("td", {}, h("code", {}, d.version)),
                h("td", {}, d.previous ? h("code", {}, d.previous) : "–"),
                h("td", {}, d.key ? h("code", {}, d.key) : "–"),
              ),
            ),
            "Deployment history, newest first",
          )
        : h(
            "p",
            { class: "muted" },
            "No promotion or rollback recorded yet; each build became current when it finished.",
          ),
      skipped ? h("p", { class: "error" }, `${skipped} history line(s) could not be read.`) : null,
    );
  } catch (error) {
    fill(body, problem(error));
  }
}

async function rollback(event) {
  event.preventDefault();
  const version = $("rollback-version").value;
  const status = $("rollback-status");
  if (!apiKey("admin")) {
    status.textContent = "Set the admin key in Settings first.";
    return;
  }
  if (!version || !window.confirm(`Make ${version} the current engine and reload the service?`))
    return;
  const button = event.submitter;
  button.disabled = true;
  try {
    const done = await postJSON("/console/api/rollback", { version }, "admin");
    let reloaded;
    try {
      await postJSON("/admin/reload", {}, "admin");
      reloaded = `${version} is current and the service reloaded it.`;
    } catch (error) {
      reloaded =
        error instanceof ApiError && (error.status === 404 || error.status === 405)
          ? `${version} is current; this server cannot reload, so it serves ${done.serving} until restarted.`
          : `${version} is current, but the reload failed: ${error.message}`;
    }
    status.textContent = reloaded;
    toast(reloaded);
  } catch (error) {
    status.textContent = `Rollback refused: ${error.message}`;
  } finally {
    button.disabled = false;
    await Promise.all([loadVersions(), loadDeployments(), pollMetrics()]);
  }
}

// ---------------------------------------------------------------- start
$("live-pause").addEventListener("click", (event) => {
  paused = !paused;
  event.currentTarget.setAttribute("aria-pressed", String(paused));
  event.currentTarget.textContent = paused ? "Resume" : "Pause";
  if (!paused) pollMetrics();
});
$("rollback-form").addEventListener("submit", rollback);
settingsDialog("admin");
loadVersions();
loadExperiment();
loadDeployments();
pollMetrics();
pollMonitoring();
setInterval(pollMetrics, POLL_SECONDS * 1000);
setInterval(pollMonitoring, 2 * POLL_SECONDS * 1000);
$("monitoring-window").addEventListener("change", loadCharts);
