// Reading the service's /metrics page (Prometheus text format) in the browser: samples,
// request counts per route and latency quantiles interpolated from histogram buckets the
// way Prometheus' histogram_quantile() does.

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
const ESCAPES = { n: "\n", "\\": "\\", '"': '"' };

function number(text) {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  return Number(text);
}

/** Every sample line as {name, labels, value}; comments and blank lines are skipped. */
export function parseMetrics(text) {
  const samples = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const match = line.match(SAMPLE);
    if (!match) continue;
    const labels = {};
    for (const [, name, value] of (match[2] || "").matchAll(LABEL)) {
      labels[name] = value.replace(/\\(.)/g, (_, c) => ESCAPES[c] ?? c);
    }
    samples.push({ name: match[1], labels, value: number(match[3]) });
  }
  return samples;
}

/**
 * The q-quantile of a histogram given as cumulative buckets [{le, count}], by linear
 * interpolation inside the bucket that holds the rank; null for an empty histogram. A rank
 * in the +Inf bucket answers the largest finite bound (the histogram knows no more).
 */
export function histogramQuantile(q, buckets) {
  const sorted = [...buckets].sort((a, b) => a.le - b.le);
  const total = sorted.length ? sorted[sorted.length - 1].count : 0;
  if (!total) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const { le, count } of sorted) {
    if (count >= rank) {
      if (le === Infinity) return lower;
      if (count === below) return le;
      return lower + ((le - lower) * (rank - below)) / (count - below);
    }
    lower = le;
    below = count;
  }
  return lower;
}

/** Requests, client and server errors, p50 and p99 (seconds) per route and method. */
export function routeStats(samples, prefix = "shoplm_http_") {
  const rows = new Map();
  const row = (labels) => {
    const key = `${labels.method} ${labels.route}`;
    if (!rows.has(key)) {
      rows.set(key, {
        route: labels.route,
        method: labels.method,
        requests: 0,
        clientErrors: 0,
        serverErrors: 0,
        buckets: [],
      });
    }
    return rows.get(key);
  };
  for (const { name, labels, value } of samples) {
    if (name === `${prefix}requests_total`) {
      const entry = row(labels);
      entry.requests += value;
      const status = Number(labels.status);
      if (status >= 500) entry.serverErrors += value;
      else if (status >= 400) entry.clientErrors += value;
    } else if (name === `${prefix}request_seconds_bucket`) {
      row(labels).buckets.push({ le: number(labels.le), count: value });
    }
  }
  return [...rows.values()]
    .map(({ buckets, ...entry }) => ({
      ...entry,
      p50: histogramQuantile(0.5, buckets),
      p99: histogramQuantile(0.99, buckets),
    }))
    .sort((a, b) => b.requests - a.requests || a.route.localeCompare(b.route));
}
