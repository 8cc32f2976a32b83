// GLORY-CL console: a small single-page app over the public API (/api/v1) and its
// event stream. Signed in with a session cookie (HttpOnly); every change carries the
// session's CSRF token in X-CSRF-Token.
'use strict';

const STATES = ['up', 'suspect', 'unreachable', 'down', 'left', 'joining'];
const COLOR = {};
for (const s of STATES) {
  COLOR[s] = getComputedStyle(document.documentElement).getPropertyValue('--' + s).trim() || '#bbbbbb';
}
const CELL = 6, GAP = 12, LABEL = 14;

const S = {
  csrf: null, role: null, tenant: null,
  nodes: new Map(),       // id -> {id, hostname, group, state, load}
  cells: new Map(),       // id -> {x, y, li}
  layout: [],             // [{group, x, y, ids}]
  events: null, filter: '', offset: 0, sort: 'id', page: 50, total: 0,
};
const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const stateBadge = (s) => el('span', { class: 'state state-' + s, text: s });
const when = (ms) => ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '-';

async function api(method, path, body) {
  const headers = { 'accept': 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET' && S.csrf) headers['x-csrf-token'] = S.csrf;
  const r = await fetch(path, { method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (r.status === 401 && !path.endsWith('/session')) { showSignin(); }
  if (!r.ok) throw new Error((data && data.error && data.error.message) || r.statusText);
  return data;
}

// ---- sign in / out ------------------------------------------------------------------

function showSignin() {
  for (const p of document.querySelectorAll('.page')) p.hidden = true;
  $('#nav').hidden = true; $('#signout').hidden = true; $('#who').textContent = '';
  $('#signin').hidden = false;
  if (S.events) { S.events.close(); S.events = null; }
}

function signedIn(session) {
  S.csrf = session.csrf_token; S.role = session.role; S.tenant = session.tenant;
  $('#signin').hidden = true; $('#nav').hidden = false; $('#signout').hidden = false;
  $('#who').textContent = session.user ? `${session.user} (${session.role})`
    : session.role + (session.tenant ? ' of ' + session.tenant : '');
  // Tenants and components see their pools only.
  for (const a of document.querySelectorAll('#nav a[data-page]')) {
    a.hidden = S.role !== 'operator' && a.dataset.page !== 'pools';
  }
  const home = S.role === 'operator' ? '#/overview' : '#/pools';
  if (!location.hash || (S.role !== 'operator' && !location.hash.startsWith('#/pools'))) {
    if (location.hash !== home) { location.hash = home; return; }  // hashchange routes
  }
  route();
}

$('#signin-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = f.token.value ? { token: f.token.value } : { user: f.user.value, password: f.password.value };
  try {
    performance.mark('glory-signin');
    signedIn(await api('POST', '/api/v1/session', body));
    f.reset(); $('#signin-error').textContent = '';
  } catch (e) { $('#signin-error').textContent = e.message; }
});

$('#signout').addEventListener('click', async () => {
  try { await api('DELETE', '/api/v1/session'); } catch (_) { /* signed out anyway */ }
  S.csrf = null; showSignin();
});

// ---- pages -------------------------------------------------------------------------

function route() {
  if (!S.csrf) return;
  const [page, arg] = location.hash.slice(2).split('/');
  for (const p of document.querySelectorAll('.page')) p.hidden = true;
  for (const a of document.querySelectorAll('#nav a[data-page]')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const show = { overview, nodes: nodesPage, node: () => nodePage(decodeURIComponent(arg || '')),
    groups: groupsPage, pools: poolsPage, alerts: alertsPage }[page];
  const section = $('#page-' + page);
  if (!show || !section) return;
  section.hidden = false;
  show().catch((e) => section.append(el('p', { class: 'error', role: 'alert', text: e.message })));
}
window.addEventListener('hashchange', route);

// Overview: every node in one request, then live from the event stream.
async function overview() {
  const [page, cluster, alerts, groups] = await Promise.all([
    api('GET', '/api/v1/nodes?view=summary&limit=10000'),
    api('GET', '/api/v1/cluster'),
    api('GET', '/api/v1/alerts?state=firing'),
    api('GET', '/api/v1/groups'),
  ]);
  $('#overview-groups').replaceChildren(...groups.items.map((g) => el('li', {
    text: `${g.id}: master ${g.master || 'none'}${g.connected ? '' : ' (not connected)'}, ${(g.standbys || []).length} standby, ${g.nodes} nodes` })));
  S.nodes.clear();
  for (const n of page.items) S.nodes.set(n.id, n);
  layout();
  draw();
  recount();
  counts();
  const firing = $('#firing');
  firing.replaceChildren(...alerts.items.map(alertItem));
  if (!alerts.items.length) firing.append(el('li', { text: 'none' }));
  listen();
  document.body.dataset.overview = 'ready';
  performance.mark('glory-overview');
  return cluster;
}

function layout() {
  const groups = new Map();
  for (const n of S.nodes.values()) {
    if (!groups.has(n.group)) groups.set(n.group, []);
    groups.get(n.group).push(n.id);
  }
  const canvas = $('#heatmap');
  const width = canvas.width;
  const names = [...groups.keys()].sort();
  const biggest = Math.max(1, ...[...groups.values()].map((g) => g.length));
  const side = Math.ceil(Math.sqrt(biggest));
  const blockW = side * CELL + GAP, blockH = side * CELL + GAP + LABEL;
  const perRow = Math.max(1, Math.floor(width / blockW));
  canvas.height = Math.max(1, Math.ceil(names.length / perRow)) * blockH;
  S.layout = []; S.cells.clear();
  const list = $('#node-cells');
  const items = [];
  names.forEach((g, i) => {
    const x0 = (i % perRow) * blockW, y0 = Math.floor(i / perRow) * blockH;
    const ids = groups.get(g).sort();
    S.layout.push({ group: g, x: x0, y: y0 });
    ids.forEach((id, j) => {
      const n = S.nodes.get(id);
      // A link per node: the keyboard's way to what a click on the heat map opens.
      const a = el('a', { href: '#/node/' + encodeURIComponent(id), text: `${n.hostname} (${g}): ${n.state}` });
      const li = el('li', { 'data-node-id': id, 'data-state': n.state }, a);
      items.push(li);
      S.cells.set(id, { x: x0 + (j % side) * CELL, y: y0 + LABEL + Math.floor(j / side) * CELL, li, a });
    });
  });
  list.replaceChildren(...items);
}

function draw() {
  const ctx = $('#heatmap').getContext('2d');
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.font = '11px system-ui, sans-serif'; ctx.fillStyle = '#333';
  for (const b of S.layout) ctx.fillText(b.group, b.x, b.y + 11);
  for (const [id, c] of S.cells) { const n = S.nodes.get(id); paint(ctx, c, n.state, n); }
}

// Colour by state, or by a metric from the nodes' last heartbeat (viridis-like ramp,
// readable by colour-blind people); grey when a node has not reported one.
const RAMP = ['#440154', '#3b528b', '#21918c', '#5ec962', '#fde725'];
function metricOf(n) {
  const l = n.load;
  if (!l) return null;
  if (S.colourBy === 'cpu') return l.cpu;
  if (S.colourBy === 'mem') return l.mem_total ? 100 * l.mem_used / l.mem_total : null;
  return null;
}
function paint(ctx, c, state, n) {
  if (S.colourBy && S.colourBy !== 'state' && n) {
    const v = metricOf(n);
    ctx.fillStyle = v === null ? '#cccccc' : RAMP[Math.min(4, Math.floor(v / 20))];
  } else {
    ctx.fillStyle = COLOR[state] || '#bbbbbb';
  }
  ctx.fillRect(c.x, c.y, CELL - 1, CELL - 1);
}
$('#colour-by').addEventListener('change', async (ev) => {
  S.colourBy = ev.target.value;
  $('#legend').textContent = S.colourBy === 'state' ? '' : '0-20 % darkest ... 80-100 % brightest; grey: no report';
  if (S.colourBy !== 'state') {
    const page = await api('GET', '/api/v1/nodes?view=summary&limit=10000');
    for (const n of page.items) S.nodes.set(n.id, n);
  }
  draw();
});

// Counts by state: computed once per load, then kept by each change.
function recount() {
  S.byState = {};
  for (const n of S.nodes.values()) S.byState[n.state] = (S.byState[n.state] || 0) + 1;
}
function counts() {
  const by = S.byState;
  $('#counts').replaceChildren(`${S.nodes.size} nodes: `,
    ...Object.keys(by).sort().flatMap((s) => [stateBadge(s), ` ${by[s]}  `]));
}

function cellAt(ev) {
  const canvas = $('#heatmap');
  const r = canvas.getBoundingClientRect();
  const x = (ev.clientX - r.left) * canvas.width / r.width, y = (ev.clientY - r.top) * canvas.height / r.height;
  for (const [id, c] of S.cells) {
    if (x >= c.x && x < c.x + CELL && y >= c.y && y < c.y + CELL) return id;
  }
  return null;
}
$('#heatmap').addEventListener('mousemove', (ev) => {
  const id = cellAt(ev);
  const n = id && S.nodes.get(id);
  $('#hover').textContent = n ? `${n.hostname} ${n.id} in ${n.group}: ${n.state}` : '';
});
$('#heatmap').addEventListener('click', (ev) => {
  const id = cellAt(ev);
  if (id) location.hash = '#/node/' + encodeURIComponent(id);
});

// One stream for every page; the overview's cells and lists follow it. Changes are
// painted once per animation frame, however many arrive.
const pending = new Map();
function listen() {
  if (S.events) return;
  const es = new EventSource('/api/v1/events');
  S.events = es;
  const feed = (kind, d) => {
    feedQueue.push(`${when(d.at_ms)} ${kind} ${d.node || d.pool || d.monitor || ''} ${d.to || d.level || ''}`);
    if (feedQueue.length > 100) feedQueue.shift();
    schedule();
  };
  es.addEventListener('node_state', (m) => {
    const d = JSON.parse(m.data);
    const n = S.nodes.get(d.node);
    if (n && n.state !== d.to) {
      S.byState[n.state] = (S.byState[n.state] || 1) - 1;
      if (!S.byState[n.state]) delete S.byState[n.state];
      S.byState[d.to] = (S.byState[d.to] || 0) + 1;
      n.state = d.to; pending.set(d.node, d.to);
    }
    feed('node_state', d);
  });
  for (const kind of ['alert_firing', 'alert_resolved', 'pool_created', 'pool_deleted', 'node_removed', 'group_master_changed']) {
    es.addEventListener(kind, (m) => {
      const d = JSON.parse(m.data);
      feed(kind, d);
      if (kind.startsWith('alert_') && !$('#page-overview').hidden) refreshFiring();
    });
  }
}
let frame = 0;
const feedQueue = [];
function schedule() {
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    if (feedQueue.length) {
      const list = $('#feed');
      const items = document.createDocumentFragment();
      for (const text of feedQueue.reverse()) items.append(el('li', { text }));
      feedQueue.length = 0;
      list.prepend(items);
      while (list.children.length > 100) list.lastChild.remove();
    }
    const ctx = $('#heatmap').getContext('2d');
    for (const [id, state] of pending) {
      const c = S.cells.get(id);
      if (!c) continue;
      paint(ctx, c, state, S.nodes.get(id));
      c.li.dataset.state = state;
      const n = S.nodes.get(id);
      c.a.textContent = `${n.hostname} (${n.group}): ${state}`;
    }
    pending.clear();
    counts();
  });
}
async function refreshFiring() {
  const alerts = await api('GET', '/api/v1/alerts?state=firing');
  $('#firing').replaceChildren(...alerts.items.map(alertItem));
}
const alertItem = (a) => el('li', { text: `${a.level} ${a.monitor} ${a.node || a.group} ${a.value ?? ''}` });

// Nodes: server-side filter, sort and pages; bulk actions on a selection or a filter.
async function nodesPage() {
  $('#filter').value = S.filter;
  await loadNodes();
}
async function loadNodes() {
  const q = new URLSearchParams({ filter: S.filter, sort: S.sort, offset: S.offset, limit: S.page, view: 'summary' });
  const page = await api('GET', '/api/v1/nodes?' + q);
  S.total = page.total;
  $('#nodes-total').textContent = `${page.total} nodes match`;
  $('#cli-filter').textContent = S.filter;
  $('#nodes-table tbody').replaceChildren(...page.items.map((n) => el('tr', { 'data-node-id': n.id, 'data-state': n.state },
    el('td', {}, el('input', { type: 'checkbox', class: 'pick', value: n.id, 'aria-label': 'select ' + n.id })),
    el('td', {}, el('a', { href: '#/node/' + encodeURIComponent(n.id), text: n.id })),
    el('td', { text: n.hostname }), el('td', { text: n.group }), el('td', {}, stateBadge(n.state)),
    el('td', { text: n.load ? n.load.cpu.toFixed(0) + ' %' : '-' }),
    el('td', { text: Object.entries(n.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ') }))));
  $('#nodes-prev').disabled = S.offset === 0;
  $('#nodes-next').disabled = S.offset + S.page >= page.total;
}
$('#filter-form').addEventListener('submit', (ev) => {
  ev.preventDefault(); S.filter = $('#filter').value.trim(); S.offset = 0;
  loadNodes().catch(showError('#nodes-total'));
});
$('#nodes-prev').addEventListener('click', () => { S.offset = Math.max(0, S.offset - S.page); loadNodes(); });
$('#nodes-next').addEventListener('click', () => { S.offset += S.page; loadNodes(); });
for (const b of document.querySelectorAll('th button[data-sort]')) {
  b.addEventListener('click', () => { S.sort = b.dataset.sort; S.offset = 0; loadNodes(); });
}
$('#select-all').addEventListener('change', (ev) => {
  for (const c of document.querySelectorAll('.pick')) c.checked = ev.target.checked;
});
const showError = (sel) => (e) => { $(sel).textContent = e.message; $(sel).classList.add('error'); };

function parseLabel(text) {
  const i = text.indexOf('=');
  if (i <= 0) throw new Error('label: write it as name=value');
  return { [text.slice(0, i).trim()]: text.slice(i + 1).trim() };
}
async function bulk(target) {
  const out = $('#bulk-results');
  try {
    const body = { action: 'label', labels: parseLabel($('#bulk-label').value), ...target };
    const preview = await api('POST', '/api/v1/nodes/bulk', { ...body, dry_run: true });
    if (!confirm(`This labels ${preview.matched} servers with ${$('#bulk-label').value}. Go on?`)) return;
    const done = await api('POST', '/api/v1/nodes/bulk', body);
    const failed = done.results.filter((r) => !r.ok);
    out.replaceChildren(el('p', { role: 'status', 'data-bulk': 'done',
      text: `${done.results.length - failed.length} of ${done.matched} labelled` }),
      ...failed.map((r) => el('p', { class: 'error', text: `${r.node}: ${r.error}` })));
    await loadNodes();
  } catch (e) { out.replaceChildren(el('p', { class: 'error', role: 'alert', text: e.message })); }
}
const selected = () => [...document.querySelectorAll('.pick:checked')].map((c) => c.value);
$('#bulk-remove').addEventListener('click', async () => {
  const nodes = selected();
  const out = $('#bulk-results');
  if (!nodes.length) { out.replaceChildren(el('p', { class: 'error', text: 'select nodes first' })); return; }
  if (!confirm(`This removes ${nodes.length} servers from the cluster (they may not enroll again until admitted). Go on?`)) return;
  try {
    const done = await api('POST', '/api/v1/nodes/bulk', { action: 'remove', nodes });
    out.replaceChildren(...done.results.map((r) => el('p', { class: r.ok ? '' : 'error', text: `${r.node}: ${r.ok ? 'removed' : r.error}` })));
    await loadNodes();
  } catch (e) { out.replaceChildren(el('p', { class: 'error', role: 'alert', text: e.message })); }
});
$('#bulk-pool-add').addEventListener('click', async () => {
  const nodes = selected(), pool = $('#bulk-pool').value.trim();
  const out = $('#bulk-results');
  if (!nodes.length || !pool) { out.replaceChildren(el('p', { class: 'error', text: 'select nodes and name a pool' })); return; }
  if (!confirm(`This adds ${nodes.length} servers to pool ${pool}. Go on?`)) return;
  try {
    await api('POST', `/api/v1/pools/${encodeURIComponent(pool)}/nodes`, { nodes });
    out.replaceChildren(el('p', { role: 'status', text: `${nodes.length} nodes added to ${pool}` }));
  } catch (e) { out.replaceChildren(el('p', { class: 'error', role: 'alert', text: e.message })); }
});
$('#bulk-selected').addEventListener('click', () =>
  bulk({ nodes: [...document.querySelectorAll('.pick:checked')].map((c) => c.value) }));
$('#bulk-all').addEventListener('click', () => bulk({ filter: S.filter }));

// One node: inventory, state history, charts from its group master's statistics.
async function nodePage(id) {
  const n = await api('GET', '/api/v1/nodes/' + encodeURIComponent(id));
  $('#node-title').textContent = `${n.hostname} (${n.id})`;
  for (const s of document.querySelectorAll('.node-id')) s.textContent = n.id;
  const inv = n.inventory || {};
  const dl = el('dl', {});
  for (const [k, v] of [['state', n.state], ['group', n.group], ['cpus', inv.cpus], ['memory', inv.memory_bytes && (inv.memory_bytes / 2 ** 30).toFixed(0) + ' GiB'],
    ['kernel', inv.kernel], ['os', inv.os], ['labels', Object.entries(n.labels || {}).map(([a, b]) => `${a}=${b}`).join(' ')]]) {
    dl.append(el('dt', { text: k }), el('dd', { text: v ?? '-' }));
  }
  const hist = el('ol', {}, ...(n.history || []).slice(-10).map((h) => el('li', { text: `${when(h.at_ms)} ${h.state}` })));
  $('#node-detail').replaceChildren(dl, el('h2', { text: 'State history' }), hist);
  const pools = await api('GET', '/api/v1/pools');
  const mine = pools.items.filter((p) => (p.nodes || []).some((m) => m.id === id));
  $('#node-pools').replaceChildren(...(mine.length ? mine.map((p) => {
    const master = p.master && p.master.node === id;
    return el('li', { text: `${p.name} (${p.component}, tenant ${p.tenant})` +
      (master ? `: its master runs here, process ${p.master.process}, ${p.master.restarts} restarts, epoch ${p.master.epoch}` : '') });
  }) : [el('li', { text: 'in no pool; runs no component master' })]));
  // Live: the charts are drawn again every 15 s while the page is shown.
  const nic = (inv.nics || [])[0], disk = (inv.disks || [])[0];
  const charts = () => Promise.all([
    chart(id, 'cpu.percent', '', '#node-chart-cpu', '%'),
    chart(id, 'mem.used_bytes', '', '#node-chart-mem', 'bytes'),
    nic ? chart(id, 'net.rx_bytes', 'iface=' + nic.name, '#node-chart-net', 'bytes/s') : null,
    disk ? chart(id, 'disk.used_percent', 'mount=' + disk.mount_point, '#node-chart-disk', '%') : null,
  ]);
  await charts();
  clearInterval(S.chartTimer);
  S.chartTimer = setInterval(() => {
    if ($('#page-node').hidden) { clearInterval(S.chartTimer); return; }
    charts();
  }, 15000);
}
async function chart(id, item, labels, sel, unit) {
  const to = Date.now(), from = to - 3600e3;
  const box = $(sel);
  try {
    const q = labels ? '&labels=' + encodeURIComponent(labels) : '';
    const h = await api('GET', `/api/v1/nodes/${encodeURIComponent(id)}/metrics?item=${item}${q}&from=${from}&to=${to}&step=30`);
    const pts = h.points;
    const data = [pts.map((p) => p[0] / 1000), pts.map((p) => p[1]), pts.map((p) => p[2]), pts.map((p) => p[3])];
    box.replaceChildren();
    new uPlot({ width: Math.min(900, box.clientWidth || 900), height: 220,
      scales: { x: { time: true, range: [from / 1000, to / 1000] } },
      series: [{}, { label: 'avg ' + unit, stroke: '#0072B2' }, { label: 'min', stroke: '#999' }, { label: 'max', stroke: '#D55E00' }] },
    data, box);
  } catch (e) { box.replaceChildren(el('p', { class: 'error', text: e.message })); }
}

async function groupsPage() {
  const g = await api('GET', '/api/v1/groups');
  $('#groups-table tbody').replaceChildren(...g.items.map((x) => el('tr', {},
    el('td', { text: x.id }), el('td', { text: x.master || '-' }), el('td', { text: (x.standbys || []).join(' ') }),
    el('td', { text: x.nodes }), el('td', { text: (x.nodes_by_state || {}).up || 0 }),
    el('td', { text: (x.nodes_by_state || {}).down || 0 }),
    el('td', { text: x.load && x.load.cpu_avg !== null ? `${x.load.cpu_avg.toFixed(0)} % (max ${x.load.cpu_max.toFixed(0)} %)` : '-' }),
    el('td', { text: x.samples ? x.samples.ingested : '-' }))));
}

async function poolsPage() {
  const p = await api('GET', '/api/v1/pools');
  const button = (text, action) => {
    const b = el('button', { text });
    b.addEventListener('click', async () => {
      try { await action(); await poolsPage(); } catch (e) { $('#pool-error').textContent = e.message; }
    });
    return b;
  };
  $('#pools-table tbody').replaceChildren(...p.items.map((x) => el('tr', { 'data-pool': x.name },
    el('td', { text: x.name }), el('td', { text: x.tenant || '-' }), el('td', { text: (x.nodes || []).length }),
    el('td', { text: x.master ? x.master.node || '-' : '-' }), el('td', { text: x.epoch ?? '-' }),
    el('td', { text: (x.candidates || []).map((c) => c.node + (c.master ? ' (master)' : '')).join(', ') }),
    el('td', {},
      button('Fail over', () => confirm(`Fail ${x.name}'s master over to its next candidate?`) &&
        api('POST', `/api/v1/pools/${encodeURIComponent(x.name)}/master/failover`)),
      button('Grow by 1', () => api('POST', `/api/v1/pools/${encodeURIComponent(x.name)}/nodes`, { count: 1 })),
      button('Set candidates', () => {
        const text = prompt(`${x.name}: master candidates in order (node ids, comma-separated)`,
          (x.candidates || []).map((c) => c.node).join(', '));
        if (text === null) return null;
        const nodes = text.split(',').map((t) => t.trim()).filter(Boolean);
        return api('POST', `/api/v1/pools/${encodeURIComponent(x.name)}/candidates`, { nodes, replace: true });
      }),
      button('Delete', () => confirm(`Delete pool ${x.name} and release its ${(x.nodes || []).length} nodes?`) &&
        api('DELETE', `/api/v1/pools/${encodeURIComponent(x.name)}`))))));
  const names = p.items.map((x) => x.name);
  const events = [];
  for (const name of names.slice(0, 5)) {
    const d = await api('GET', `/api/v1/pools/${encodeURIComponent(name)}`);
    for (const e of d.events || []) events.push(e);
  }
  events.sort((a, b) => b.at_ms - a.at_ms);
  $('#pool-events').replaceChildren(...events.slice(0, 30).map((e) => el('li', { text: `${when(e.at_ms)} ${e.kind} ${e.pool || ''} ${e.node || ''}` })));
}
$('#pool-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = { name: f.name.value.trim(), component: f.component.value.trim(), size: Number(f.size.value), spread: f.spread.value };
  if (f.tenant.value.trim()) body.tenant = f.tenant.value.trim();
  try { await api('POST', '/api/v1/pools', body); f.reset(); $('#pool-error').textContent = ''; await poolsPage(); } catch (e) { $('#pool-error').textContent = e.message; }
});

async function alertsPage() {
  const a = await api('GET', '/api/v1/alerts');
  $('#alerts-table tbody').replaceChildren(...a.items.map((x) => {
    const ack = el('button', { text: x.acked ? 'acked' : 'ack' });
    ack.disabled = x.acked;
    ack.addEventListener('click', async () => { await api('POST', `/api/v1/alerts/${x.id}/ack`); alertsPage(); });
    return el('tr', {}, el('td', { text: x.level }), el('td', { text: x.state }), el('td', { text: x.monitor }),
      el('td', { text: x.node || '-' }), el('td', { text: x.group }), el('td', { text: x.value ?? '-' }),
      el('td', { text: when(x.since) }), el('td', { text: x.detail || '' }), el('td', {}, ack));
  }));
  const del = (path, then) => {
    const b = el('button', { text: 'remove' });
    b.addEventListener('click', async () => { await api('DELETE', path); then(); });
    return b;
  };
  const s = await api('GET', '/api/v1/silences');
  $('#silences-table tbody').replaceChildren(...s.items.map((x) => el('tr', {},
    el('td', { text: Object.entries(x.matchers || {}).map(([k, v]) => `${k}=${v}`).join(' ') }),
    el('td', { text: when(x.ends_at) }), el('td', { text: x.comment || '' }),
    el('td', {}, del(`/api/v1/silences/${encodeURIComponent(x.id)}`, alertsPage)))));
  const m = await api('GET', '/api/v1/monitors');
  $('#monitors-table tbody').replaceChildren(...m.items.map((x) => el('tr', {},
    el('td', { text: x.name }), el('td', { text: x.kind }), el('td', { text: x.item }), el('td', { text: JSON.stringify(x.scope) }),
    el('td', { text: (x.rules || []).map((r) => `${r.level} ${r.op} ${r.threshold}`).join('; ') }),
    el('td', {}, del(`/api/v1/monitors/${encodeURIComponent(x.name)}`, alertsPage)))));
}
$('#monitor-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const rule = { level: f.level.value, op: f.op.value, threshold: Number(f.threshold.value), for_seconds: Number(f.for_seconds.value) };
  try {
    await api('POST', '/api/v1/monitors', { name: f.name.value.trim(), scope: { all: true }, item: f.item.value, rules: [rule] });
    f.reset(); $('#monitor-error').textContent = ''; await alertsPage();
  } catch (e) { $('#monitor-error').textContent = e.message; }
});
$('#silence-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const matchers = {};
  if (f.node.value.trim()) matchers.node = f.node.value.trim();
  if (f.monitor.value.trim()) matchers.monitor = f.monitor.value.trim();
  try {
    await api('POST', '/api/v1/silences', { matchers, ends_at: Date.now() + Number(f.hours.value) * 3600e3, comment: f.comment.value });
    f.reset(); $('#silence-error').textContent = ''; await alertsPage();
  } catch (e) { $('#silence-error').textContent = e.message; }
});

// Start: an existing session (cookie) or the sign-in form.
api('GET', '/api/v1/session').then(signedIn, showSignin);
