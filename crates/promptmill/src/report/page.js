
// promptmill report: builds the page from the JSON data block. Every value from the data is
// written with textContent or as an SVG attribute, never parsed as HTML.
(() => {
  'use strict';
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const cols = Array.isArray(data.columns) ? data.columns : [];
  const rows = Array.isArray(data.rows) ? data.rows : [];
  const meta = data.meta || {};
  const summary = meta.summary && typeof meta.summary === 'object' ? meta.summary : null;
  const PAGE_SIZE = 100;
  const KNOWN_STATUS = ['ok', 'failed', 'rejected', 'pending'];
  const NUMERIC = ['prompt_tokens', 'completion_tokens', 'cost_usd', 'attempts'];

  const col = (name) => cols.findIndex((c) => c.name === name);
  const STATUS = col('status');
  const COST = col('cost_usd');
  const PROMPT = col('prompt_tokens');
  const COMPLETION = col('completion_tokens');

  const cell = (r, i) => (i >= 0 && i < r.length && r[i] != null ? String(r[i]) : '');
  const num = (s) => {
    if (s === '') return null;
    const v = Number(s);
    return Number.isFinite(v) ? v : null;
  };
  const statusOf = (r) => (STATUS >= 0 ? cell(r, STATUS) || '(none)' : '(none)');
  // A row that used tokens but has no cost was priced at an unknown price: never $0.
  const costOf = (r) => num(cell(r, COST));
  const costUnknown = (r) => costOf(r) === null && num(cell(r, PROMPT)) !== null;

  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const SVG = 'http://www.w3.org/2000/svg';
  const svg = (tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  };
  // Dollars with up to 6 decimals and at least cents, like the summary: $0.000123, $12.50.
  const usd = (v) => {
    if (v === null || v === undefined || !Number.isFinite(Number(v))) return 'unknown';
    return '$' + Number(v).toFixed(6).replace(/(\.\d\d\d*?)0+$/, '$1');
  };
  const int = (v) => (v === null || v === undefined ? 'unknown' : Number(v).toLocaleString('en'));

  // Header.
  const job = typeof meta.job === 'string' ? meta.job : 'job';
  document.title = 'promptmill report: ' + job;
  document.getElementById('title').textContent = 'promptmill report: ' + job;
  document.getElementById('subtitle').textContent =
    (meta.output ? String(meta.output) + ' \u00b7 ' : '') + rows.length.toLocaleString('en') + ' rows';

  // Totals.
  const counts = new Map();
  for (const r of rows) {
    const s = statusOf(r);
    counts.set(s, (counts.get(s) || 0) + 1);
  }
  const statuses = [...counts.keys()].sort((a, b) => {
    const ia = KNOWN_STATUS.indexOf(a);
    const ib = KNOWN_STATUS.indexOf(b);
    if (ia >= 0 || ib >= 0) return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib);
    return a < b ? -1 : a > b ? 1 : 0;
  });
  const fromRows = () => {
    let cost = 0;
    let unknown = false;
    let prompt = 0;
    let completion = 0;
    for (const r of rows) {
      const c = costOf(r);
      if (c !== null) cost += c;
      else if (costUnknown(r)) unknown = true;
      prompt += num(cell(r, PROMPT)) || 0;
      completion += num(cell(r, COMPLETION)) || 0;
    }
    return { cost: unknown ? null : cost, prompt, completion };
  };
  const totals = summary
    ? { cost: summary.cost_usd, prompt: summary.prompt_tokens, completion: summary.completion_tokens }
    : fromRows();
  const dl = document.getElementById('totals');
  const total = (label, value, id) => {
    const d = el('div');
    d.append(el('dt', label));
    const dd = el('dd', value);
    if (id) dd.id = id;
    d.append(dd);
    dl.append(d);
  };
  total('rows', rows.length.toLocaleString('en'), 'total-rows');
  for (const s of statuses) total(s, counts.get(s).toLocaleString('en'));
  total(summary ? 'cost' : 'cost (added up from the rows)', usd(totals.cost), 'total-cost');
  total('prompt tokens', int(totals.prompt), 'total-prompt-tokens');
  total('completion tokens', int(totals.completion), 'total-completion-tokens');
  if (summary && summary.budget_usd !== null && summary.budget_usd !== undefined) {
    total('spent of budget', usd(summary.spent_total_usd) + ' of ' + usd(summary.budget_usd));
  }

  // Cost per row, in input order; many rows share a bar.
  const costChart = () => {
    const box = document.getElementById('cost-chart');
    const caption = document.getElementById('cost-caption');
    if (COST < 0 || rows.length === 0) {
      caption.textContent = 'No cost per row in this output.';
      return;
    }
    const bars = Math.min(rows.length, 240);
    const group = Math.ceil(rows.length / bars);
    const sums = [];
    for (let b = 0; b * group < rows.length; b++) {
      let sum = 0;
      let unknown = false;
      for (let i = b * group; i < Math.min(rows.length, (b + 1) * group); i++) {
        const c = costOf(rows[i]);
        if (c !== null) sum += c;
        else if (costUnknown(rows[i])) unknown = true;
      }
      sums.push({ sum, unknown, first: b * group + 1, last: Math.min(rows.length, (b + 1) * group) });
    }
    const max = Math.max(...sums.map((s) => s.sum), 0);
    // A few rows get narrow bars, not a wall of colour.
    const W = Math.min(720, Math.max(240, sums.length * 24));
    const H = 120;
    const w = W / sums.length;
    const chart = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'cost per row' });
    sums.forEach((s, i) => {
      const h = s.unknown ? H : max > 0 ? Math.max(1, (s.sum / max) * (H - 4)) : 1;
      const bar = svg('rect', { x: i * w, y: H - h, width: Math.max(1, w - 1), height: h });
      if (s.unknown) bar.setAttribute('class', 'unknown');
      const t = svg('title');
      const which = s.first === s.last ? `row ${s.first}` : `rows ${s.first}\u2013${s.last}`;
      t.textContent = `${which}: ${usd(s.sum)}${s.unknown ? ' + unknown' : ''}`;
      bar.append(t);
      chart.append(bar);
    });
    box.append(chart);
    caption.textContent = 'Cost per row in input order (highest bar ' + usd(max) + ')' +
      (group > 1 ? `; each bar adds up ${group} rows` : '') +
      (sums.some((s) => s.unknown) ? '; red bars hold rows of unknown cost' : '') + '.';
  };
  costChart();

  // Rows: filter by status and text, one page at a time.
  const table = document.getElementById('rows');
  const thead = table.tHead;
  const tbody = table.tBodies[0];
  const kindClass = (c) => (c.kind === 'output' ? 'output' : NUMERIC.includes(c.name) ? 'num' : '');
  const headRow = el('tr');
  headRow.append(el('th', '#', 'num'));
  for (const c of cols) {
    const th = el('th', c.name, kindClass(c));
    th.title = c.kind;
    headRow.append(th);
  }
  thead.append(headRow);

  const filter = document.getElementById('status-filter');
  const all = el('option', `all (${rows.length.toLocaleString('en')})`);
  all.value = '';
  filter.append(all);
  for (const s of statuses) {
    const o = el('option', `${s} (${counts.get(s).toLocaleString('en')})`);
    o.value = s;
    filter.append(o);
  }
  const search = document.getElementById('search');
  let haystack = null;
  let shown = rows.map((_, i) => i);
  let page = 0;

  const render = () => {
    const pages = Math.max(1, Math.ceil(shown.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const body = document.createDocumentFragment();
    for (const i of shown.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE)) {
      const r = rows[i];
      const tr = el('tr');
      tr.dataset.row = String(i + 1);
      tr.append(el('td', i + 1, 'num'));
      cols.forEach((c, j) => {
        let text = cell(r, j);
        let cls = kindClass(c);
        if (j === STATUS && KNOWN_STATUS.includes(text)) cls = 'status-' + text;
        if (j === COST && costUnknown(r)) {
          text = 'unknown';
          cls = 'num unknown-cost';
        }
        tr.append(el('td', text, cls));
      });
      body.append(tr);
    }
    tbody.replaceChildren(body);
    document.getElementById('count').textContent =
      `${shown.length.toLocaleString('en')} of ${rows.length.toLocaleString('en')} rows`;
    document.getElementById('page').textContent = `page ${page + 1} of ${pages}`;
    document.getElementById('prev').disabled = page === 0;
    document.getElementById('next').disabled = page >= pages - 1;
  };

  const apply = () => {
    const status = filter.value;
    const needle = search.value.trim().toLowerCase();
    if (needle && !haystack) {
      haystack = rows.map((r) => r.map((c) => (c == null ? '' : String(c))).join('\n').toLowerCase());
    }
    shown = [];
    rows.forEach((r, i) => {
      if (status && statusOf(r) !== status) return;
      if (needle && !haystack[i].includes(needle)) return;
      shown.push(i);
    });
    page = 0;
    render();
  };
  filter.addEventListener('change', apply);
  search.addEventListener('input', apply);
  document.getElementById('prev').addEventListener('click', () => { page -= 1; render(); });
  document.getElementById('next').addEventListener('click', () => { page += 1; render(); });
  render();

  // Length of the text in each column, as a histogram per column.
  const histograms = () => {
    const box = document.getElementById('histograms');
    cols.forEach((c, j) => {
      if (c.kind === 'result' && c.name !== 'error') return;
      const lengths = rows.map((r) => cell(r, j).length);
      if (lengths.length === 0) return;
      const sorted = [...lengths].sort((a, b) => a - b);
      const max = sorted[sorted.length - 1];
      const BINS = 16;
      const width = Math.max(1, Math.ceil((max + 1) / BINS));
      const bins = new Array(Math.ceil((max + 1) / width)).fill(0);
      for (const n of lengths) bins[Math.floor(n / width)] += 1;
      const top = Math.max(...bins);
      const W = 240;
      const H = 80;
      const w = W / bins.length;
      const fig = el('figure');
      const chart = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'lengths of ' + c.name });
      bins.forEach((count, b) => {
        const h = count === 0 ? 0 : Math.max(1, (count / top) * (H - 4));
        const bar = svg('rect', { x: b * w, y: H - h, width: Math.max(1, w - 1), height: h });
        const t = svg('title');
        t.textContent = `${b * width}\u2013${(b + 1) * width - 1} characters: ${count} rows`;
        bar.append(t);
        chart.append(bar);
      });
      fig.append(chart);
      fig.append(el('figcaption',
        `${c.name}: ${sorted[0]}\u2013${max} characters, median ${sorted[Math.floor(sorted.length / 2)]}`));
      box.append(fig);
    });
  };
  histograms();

  // The summary and the settings, as key/value tables.
  const kv = (id, pairs) => {
    const body = document.getElementById(id).tBodies[0];
    for (const [k, v] of pairs) {
      const tr = el('tr');
      tr.append(el('th', k));
      tr.append(el('td', v));
      body.append(tr);
    }
  };
  const show = (v) => (typeof v === 'object' ? JSON.stringify(v, null, 2) : String(v));
  if (summary) {
    kv('summary', Object.entries(summary).map(([k, v]) => {
      if (k.endsWith('_usd')) {
        if (v === null || v === undefined) return [k, k === 'budget_usd' ? 'none' : 'unknown'];
        return [k, usd(v)];
      }
      return [k, v === null || v === undefined ? '\u2014' : show(v)];
    }));
  } else {
    kv('summary', [['summary', 'none beside the output (no run wrote one)']]);
  }
  const flat = [];
  const walk = (prefix, v) => {
    if (v === null || v === undefined) return;
    if (Array.isArray(v)) {
      if (v.length === 0) return;
      if (v.every((x) => typeof x !== 'object')) flat.push([prefix, v.join(', ')]);
      else flat.push([prefix, show(v)]);
    } else if (typeof v === 'object' && !prefix.endsWith('schema') && !prefix.endsWith('extra')) {
      for (const [k, x] of Object.entries(v)) walk(prefix ? prefix + '.' + k : k, x);
    } else {
      flat.push([prefix, show(v)]);
    }
  };
  walk('', meta.settings || {});
  kv('settings', flat);
})();
