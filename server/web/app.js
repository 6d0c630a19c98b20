// lookalike web page: search by image, browse and add to the collection through the /v1 API
// (docs/api.md). Plain ES2020, no dependencies.
'use strict';

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = 'lookalike.apiKey';

  const el = {
    stats: $('stats'), status: $('status'),
    apiKey: $('api-key'), keyForm: $('key-form'), keyClear: $('api-key-clear'),
    dropZone: $('drop-zone'), fileInput: $('file-input'), cameraInput: $('camera-input'),
    chooseFile: $('choose-file'), takePhoto: $('take-photo'),
    query: $('query'), queryImage: $('query-image'), queryCaption: $('query-caption'),
    dropHint: $('drop-hint'),
    searchOptions: $('search-options'), k: $('k-select'), category: $('category-filter'),
    minScore: $('min-score'), minScoreValue: $('min-score-value'), minScoreLabel: $('min-score-label'),
    searchAgain: $('search-again'),
    timings: $('timings'), results: $('results'), resultsEmpty: $('results-empty'),
    resultsHeading: $('results-heading'),
    browseCategory: $('browse-category'), browseLimit: $('browse-limit'),
    browseGrid: $('browse-grid'), browseInfo: $('browse-info'),
    browseFirst: $('browse-first'), browsePrev: $('browse-prev'), browseNext: $('browse-next'),
    addForm: $('add-form'), addFile: $('add-file'), addDescription: $('add-description'),
    addCategory: $('add-category'), addSubmit: $('add-submit'), addResult: $('add-result'),
    categoryList: $('category-list'), tileTemplate: $('tile-template'),
  };

  const state = {
    apiKey: '',
    lastQuery: null,     // {file: File} or {id: N, name, thumb}
    queryObjectUrl: null,
    searchSeq: 0,
    browseAfter: 0,      // `after` of the page shown
    browseStack: [],     // `after` of the pages before it
    browseNextAfter: null,
    browseLoaded: false,
    browseReq: 0,        // page requests made (a stale answer is dropped)
    browseSeq: 0,        // pages shown so far (data-seq on the grid, for tests)
    metric: 'cosine',    // the collection's (GET /v1/stats): cosine similarity or l2 distance
    images: null,        // the collection's image count (GET /v1/stats), null until known
  };

  // Scores are cosine similarities (higher is closer, -1..1) or, for a collection with metric
  // l2, L2 distances (lower is closer; 0..2 between unit-length embeddings). min_score is a
  // lower bound on the first and an upper bound on the second (docs/api.md).
  const isDistance = () => state.metric === 'l2';
  const L2_SLIDER_MAX = 2;

  // ---- status area -------------------------------------------------------------------------

  function setStatus(message, kind = 'info') {
    el.status.textContent = message;
    el.status.dataset.kind = kind;
    el.status.classList.toggle('error', kind === 'error');
  }
  function clearStatus() { setStatus('', 'info'); }

  // ---- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders() {
    return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
  }

  async function api(path, { method = 'GET', json, form } = {}) {
    const headers = { Accept: 'application/json', ...authHeaders() };
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body });
    } catch (err) {
      throw new ApiError(0, 'network', `cannot reach the server (${err.message})`);
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
    if (!res.ok) {
      const e = data && data.error;
      if (e && e.code) throw new ApiError(res.status, e.code, e.message || '');
      throw new ApiError(res.status, 'http_' + res.status, text.slice(0, 200) || res.statusText);
    }
    return data;
  }

  function describeError(err) {
    if (err instanceof ApiError) {
      let hint = '';
      if (err.code === 'unauthorized') hint = ' Enter the API key under "API key".';
      else if (err.code === 'forbidden') hint = ' Check the API key under "API key".';
      else if (err.code === 'not_ready') hint = ' The server is still loading; try again shortly.';
      const status = err.status ? `${err.status} ` : '';
      const msg = err.message && !/[.!?]$/.test(err.message) && hint ? `${err.message}.` : err.message;
      return `Error ${status}${err.code}: ${msg}${hint}`;
    }
    return `Error: ${err && err.message ? err.message : err}`;
  }

  function showError(err) {
    setStatus(describeError(err), 'error');
    if (err.code === 'unauthorized' || err.code === 'forbidden') $('settings').open = true;
  }

  // Thumbnails and files are plain URLs; with an API key set (a --private server wants it on
  // every /v1 route) they are fetched with the header and shown from blob URLs.
  function setImage(img, url) {
    if (!state.apiKey) { img.src = url; return; }
    fetch(url, { headers: authHeaders() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(String(r.status)))))
      .then((b) => { img.src = URL.createObjectURL(b); })
      .catch(() => { img.src = url; });
  }

  function openFile(event, url) {
    if (!state.apiKey) return;  // the link opens it
    event.preventDefault();
    const win = window.open('', '_blank');
    fetch(url, { headers: authHeaders() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error(`HTTP ${r.status}`))))
      .then((b) => { const u = URL.createObjectURL(b); if (win) win.location = u; else location.assign(u); })
      .catch((e) => { if (win) win.close(); showError(e); });
  }

  // ---- stats and categories ----------------------------------------------------------------

  function fillCategorySelect(select, categories) {
    const keep = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const [name, count] of categories) {
      if (name === '') continue;  // its value would be "All categories"' own
      const opt = document.createElement('option');
      opt.value = name;
      opt.textContent = `${name} (${count})`;
      select.appendChild(opt);
    }
    if (categories.some(([name]) => name === keep)) select.value = keep;
  }

  let statsRetry = null;
  async function loadStats() {
    clearTimeout(statsRetry);
    try {
      const s = await api('/v1/stats');
      const parts = [`${s.images} image${s.images === 1 ? '' : 's'}`];
      if (s.model) parts.push(typeof s.model === 'string' ? s.model : (s.model.name || ''));
      if (s.dim) parts.push(`${s.dim}-d`);
      if (s.metric) parts.push(s.metric);
      el.stats.textContent = parts.filter(Boolean).join(' · ');
      state.images = typeof s.images === 'number' ? s.images : null;
      // A folder with no collection yet has no metric: the first upload creates it as cosine.
      setMetric(s.metric === 'l2' ? 'l2' : 'cosine');
      const cats = Object.entries(s.categories || {}).sort((a, b) => a[0].localeCompare(b[0]));
      fillCategorySelect(el.category, cats);
      fillCategorySelect(el.browseCategory, cats);
      el.categoryList.replaceChildren(...cats.map(([name]) => {
        const o = document.createElement('option'); o.value = name; return o;
      }));
      if (el.status.dataset.kind === 'loading') clearStatus();
      return s;
    } catch (err) {
      if (err.code === 'not_ready' || err.status === 0) {
        el.stats.textContent = 'Server loading…';
        setStatus(err.code === 'not_ready' ? 'The server is loading the collection and the model…'
                                           : describeError(err), 'loading');
        statsRetry = setTimeout(loadStats, 1500);
      } else {
        el.stats.textContent = 'Stats unavailable';
        showError(err);
      }
      return null;
    }
  }

  // The score slider follows the metric: "Minimum similarity" 0..1 (0: any) for cosine,
  // "Maximum distance" 0..2 (2: any) for l2.
  function showMin() {
    const v = parseFloat(el.minScore.value);
    const any = isDistance() ? v >= L2_SLIDER_MAX : !(v > 0);
    el.minScoreValue.textContent = any ? 'any' : v.toFixed(2);
  }

  function setMetric(metric) {
    if (metric === state.metric && el.minScore.dataset.metric === metric) return;
    state.metric = metric;
    el.minScore.dataset.metric = metric;
    const dist = isDistance();
    el.minScoreLabel.textContent = dist ? 'Maximum distance' : 'Minimum similarity';
    el.minScore.max = String(dist ? L2_SLIDER_MAX : 1);
    el.minScore.value = String(dist ? L2_SLIDER_MAX : 0);
    el.minScore.setAttribute('aria-description', dist
      ? 'L2 distance: lower is closer; results farther than this are left out'
      : 'cosine similarity: higher is closer; results less similar than this are left out');
    showMin();
  }

  // ---- tiles -------------------------------------------------------------------------------

  function metadataText(md) {
    if (!md) return '';
    return Object.entries(md)
      .filter(([k]) => k !== 'category' && k !== 'description' && k !== 'filename')
      .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`).join(' · ');
  }

  // A tile for a search result (with score) or a browsed record (without).
  function makeTile(rec, score) {
    const node = el.tileTemplate.content.firstElementChild.cloneNode(true);
    const md = rec.metadata || {};
    node.dataset.id = String(rec.id);
    if (md.category !== undefined) node.dataset.category = String(md.category);
    const main = node.querySelector('.tile-main');
    const img = node.querySelector('img');
    setImage(img, rec.thumbnail_url);
    // The name the page uploaded it with (metadata "filename", see addImage), else the stored
    // file's (an upload's is its content hash).
    const name = (typeof md.filename === 'string' && md.filename) || rec.name || `#${rec.id}`;
    node.querySelector('.name').textContent = name;
    node.querySelector('.name').title = rec.path || name;
    const scoreEl = node.querySelector('.score');
    if (score !== undefined && score !== null) {
      node.dataset.score = String(score);
      scoreEl.textContent = Number(score).toFixed(3);
      const dist = isDistance();
      scoreEl.title = dist ? 'L2 distance (lower is closer)' : 'cosine similarity';
      node.dataset.scoreKind = dist ? 'distance' : 'similarity';
      // The bar grows with closeness: a similarity's value, a distance's share of 0..2 left.
      const closeness = dist ? 1 - Number(score) / L2_SLIDER_MAX : Number(score);
      const pct = Math.max(0, Math.min(1, closeness)) * 100;
      node.querySelector('.bar > span').style.width = `${pct.toFixed(1)}%`;
      main.setAttribute('aria-label',
        `#${rec.rank || ''} ${name}, ${dist ? 'distance' : 'similarity'} ${Number(score).toFixed(3)}` +
        `${md.category ? ', ' + md.category : ''}. Search for more like this`);
    } else {
      node.querySelector('.score-line').remove();
      main.setAttribute('aria-label', `${name}${md.category ? ', ' + md.category : ''}. Search for more like this`);
    }
    const cat = node.querySelector('.category');
    if (md.category !== undefined && md.category !== '') cat.textContent = String(md.category);
    else cat.remove();
    const desc = node.querySelector('.description');
    const descText = [md.description, metadataText(md)].filter(Boolean).join(' · ');
    if (descText) desc.textContent = descText; else desc.remove();
    const dims = node.querySelector('.dims');
    dims.textContent = rec.width && rec.height ? `${rec.width}×${rec.height} · #${rec.id}` : `#${rec.id}`;
    const open = node.querySelector('.open');
    open.href = rec.file_url;
    open.setAttribute('aria-label', `Open full image ${name}`);
    open.addEventListener('click', (e) => openFile(e, rec.file_url));
    // The button is replaced (or hidden with its view) by the results it asks for: focus
    // then goes to the results heading, not to the page's start.
    main.addEventListener('click', () => {
      showView('search');
      searchBy({ id: rec.id, name, thumb: rec.thumbnail_url }, true, true);
    });
    return node;
  }

  // Frees the blob URLs of the thumbnails in `container` before it is re-rendered.
  function revokeBlobs(container) {
    for (const img of container.querySelectorAll('img')) {
      if (img.src.startsWith('blob:')) URL.revokeObjectURL(img.src);
    }
  }

  // ---- search ------------------------------------------------------------------------------

  function searchParams() {
    const p = { k: parseInt(el.k.value, 10) || 10 };
    const min = parseFloat(el.minScore.value);
    // The slider's "any" end: 0 for a similarity, its maximum for a distance.
    if (isDistance() ? min < L2_SLIDER_MAX : min > 0) p.min_score = min;
    if (el.category.value) p.category = el.category.value;
    return p;
  }

  function showQuery(q) {
    if (state.queryObjectUrl) { URL.revokeObjectURL(state.queryObjectUrl); state.queryObjectUrl = null; }
    if (q.file) {
      state.queryObjectUrl = URL.createObjectURL(q.file);
      el.queryImage.src = state.queryObjectUrl;
      el.queryCaption.textContent = q.file.name || 'pasted image';
    } else {
      setImage(el.queryImage, q.thumb);
      el.queryCaption.textContent = `More like #${q.id} ${q.name || ''}`.trim();
    }
    el.queryImage.alt = `Query image ${el.queryCaption.textContent}`;
    el.query.hidden = false;
    el.dropHint.textContent = 'Drop, paste or choose another image:';
  }

  // reveal: a new query (not a changed option) scrolls the results into view where they start
  // below the screen (a phone shows the query panel and options first).
  // focusResults: move the keyboard focus to the results heading once they are shown (the
  // search was started from a result tile, which the new results replace).
  async function searchBy(q, reveal = true, focusResults = false) {
    state.lastQuery = q;
    el.searchAgain.disabled = false;
    showQuery(q);
    const seq = ++state.searchSeq;
    const p = searchParams();
    let req;
    if (q.file) {
      const form = new FormData();
      form.append('image', q.file, q.file.name || 'pasted.png');
      form.append('k', String(p.k));
      if (p.min_score !== undefined) form.append('min_score', String(p.min_score));
      if (p.category) form.append('where', categoryTerm(p.category));
      req = { method: 'POST', form };
    } else {
      const json = { id: q.id, k: p.k };
      if (p.min_score !== undefined) json.min_score = p.min_score;
      if (p.category) json.where = { category: p.category };
      req = { method: 'POST', json };
    }
    el.results.setAttribute('aria-busy', 'true');
    setStatus('Searching…', 'busy');
    try {
      const res = await api('/v1/search', req);
      if (seq !== state.searchSeq) return;  // a later search superseded this one
      const empty = renderResults(res, q, p);
      if (reveal) revealResults();
      if (focusResults) el.resultsHeading.focus();
      el.results.dataset.seq = String(seq);
      el.results.dataset.state = 'ok';
      const n = res.results.length;
      setStatus(empty || `${n} result${n === 1 ? '' : 's'}` +
                (p.category ? ` in ${p.category}` : '') +
                (q.id !== undefined ? ` like #${q.id}` : ''), 'ok');
    } catch (err) {
      if (seq !== state.searchSeq) return;
      showError(err);
      revokeBlobs(el.results);
      el.results.replaceChildren();
      el.timings.replaceChildren();
      el.resultsHeading.textContent = 'Results';
      el.resultsEmpty.textContent = 'The search failed: see the message above.';
      el.resultsEmpty.hidden = false;
      if (focusResults) el.resultsHeading.focus();
      el.results.dataset.seq = String(seq);
      el.results.dataset.state = 'error';
    } finally {
      if (seq === state.searchSeq) el.results.removeAttribute('aria-busy');
    }
  }

  // Returns the message for an answer with no results and no filter (an empty collection),
  // else ''.
  function renderResults(res, q, p) {
    revokeBlobs(el.results);
    const query = res.query || {};
    el.results.dataset.queryId = query.id === null || query.id === undefined ? '' : String(query.id);
    el.results.dataset.queryName = query.name || '';
    el.results.dataset.generation = res.generation === undefined ? '' : String(res.generation);
    el.results.replaceChildren(...res.results.map((r) => makeTile(r, r.score)));
    const n = res.results.length;
    const filtered = p.category !== undefined || p.min_score !== undefined;
    const t = res.timings || {};
    // The server answers a search on a collection that does not exist yet without running one
    // (all timings 0); a collection with no image, or none but the query, finds nothing either.
    const ranNothing = t.total_ms === 0;
    let empty = '';
    if (!n && !filtered) {
      empty = q.id !== undefined && !ranNothing && state.images !== 0
        ? 'No other images in the collection yet: add some under "Add image".'
        : 'The collection is empty: add images first under "Add image".';
    }
    el.resultsEmpty.hidden = n > 0;
    el.resultsEmpty.textContent = n ? '' : empty || 'No images match these filters.';
    el.results.dataset.empty = empty ? 'collection' : n ? '' : 'filters';
    el.resultsHeading.textContent = `Results (${n})`;
    el.timings.replaceChildren();
    if (ranNothing) return empty;
    // A search by id decodes and embeds nothing: the API sends 0 for those stages.
    const byId = q.id !== undefined;
    const fmt = (v, key) => (typeof v !== 'number' || (byId && (key === 'decode_ms' || key === 'embed_ms'))
      ? '–' : `${v.toFixed(1)} ms`);
    for (const [label, key] of [['decode', 'decode_ms'], ['embed', 'embed_ms'],
                                ['search', 'search_ms'], ['total', 'total_ms']]) {
      const span = document.createElement('span');
      span.dataset.timing = key;
      span.textContent = `${label} ${fmt(t[key], key)}`;
      if (span.textContent.endsWith('–')) span.title = 'not run: a search by id reuses the stored embedding';
      el.timings.appendChild(span);
    }
    return empty;
  }

  function revealResults() {
    const top = el.resultsHeading.getBoundingClientRect().top;
    if (top > window.innerHeight * 0.6) {
      const still = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
      el.resultsHeading.scrollIntoView({ block: 'start', behavior: still ? 'auto' : 'smooth' });
    }
  }

  function searchByFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith('image/')) {
      setStatus(`Error: ${file.name} is not an image (${file.type})`, 'error');
      return;
    }
    showView('search');
    searchBy({ file });
  }

  function firstImageFile(dt) {
    if (!dt) return null;
    for (const f of dt.files || []) if (!f.type || f.type.startsWith('image/')) return f;
    for (const item of dt.items || []) {
      if (item.kind === 'file' && item.type.startsWith('image/')) return item.getAsFile();
    }
    return null;
  }

  // ---- browse ------------------------------------------------------------------------------

  // A where term matching a category exactly, whatever it holds: a quoted IN item keeps leading
  // "=", "<", ">", commas and edge spaces as they are (store::parse_where).
  function categoryTerm(value) {
    return `category IN ["${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"]`;
  }

  async function loadBrowse(after, stack) {
    const limit = parseInt(el.browseLimit.value, 10);
    const params = new URLSearchParams({ after: String(after), limit: String(limit) });
    const filtered = !!el.browseCategory.value;
    if (filtered) params.append('where', categoryTerm(el.browseCategory.value));
    el.browseGrid.setAttribute('aria-busy', 'true');
    const req = ++state.browseReq;
    try {
      // Unfiltered, the collection's image count (GET /v1/stats, asked with the page so that it
      // is current) gives the number of pages; a filtered list has no total.
      const [res, stats] = await Promise.all([
        api(`/v1/images?${params}`),
        filtered ? null : api('/v1/stats').catch(() => null),
      ]);
      if (req !== state.browseReq) return;  // a later page request superseded this one
      const total = stats && typeof stats.images === 'number' ? stats.images : null;
      if (total !== null) state.images = total;
      if (!res.images.length && after > 0 && stack.length > state.browseStack.length) {
        // next_after named a page that turned out empty (the last page was exactly full).
        state.browseNextAfter = null;
        el.browseNext.disabled = true;
        setStatus('That was the last page.', 'ok');
        return;
      }
      state.browseAfter = after;
      state.browseStack = stack;
      state.browseNextAfter = res.next_after === undefined ? null : res.next_after;
      state.browseLoaded = true;
      revokeBlobs(el.browseGrid);
      el.browseGrid.replaceChildren(...res.images.map((r) => makeTile(r)));
      const page = state.browseStack.length + 1;
      const pages = total === null ? null : Math.max(1, Math.ceil(total / limit));
      // The last page, exactly full, still has a next_after: its next page would be empty.
      if (pages !== null && page >= pages) state.browseNextAfter = null;
      const cat = filtered ? ` in ${el.browseCategory.value}` : '';
      const of = pages === null ? '' : ` of ${pages} (${total} image${total === 1 ? '' : 's'})`;
      el.browseInfo.textContent = res.images.length
        ? `Page ${page}${of}${cat}: images #${res.images[0].id} to #${res.images[res.images.length - 1].id}`
        : (total === 0 ? 'The collection is empty: add images first under "Add image".' : `No images${cat}.`);
      el.browseGrid.dataset.seq = String(++state.browseSeq);
      el.browseGrid.dataset.after = String(after);
      el.browseGrid.dataset.page = String(page);
      el.browseGrid.dataset.pages = pages === null ? '' : String(pages);
      el.browseNext.disabled = state.browseNextAfter === null;
      el.browsePrev.disabled = el.browseFirst.disabled = state.browseStack.length === 0;
    } catch (err) {
      if (req === state.browseReq) showError(err);
    } finally {
      if (req === state.browseReq) el.browseGrid.removeAttribute('aria-busy');
    }
  }

  function browseFromStart() {
    loadBrowse(0, []);
  }

  // ---- add ---------------------------------------------------------------------------------

  async function addImage(event) {
    event.preventDefault();
    const file = el.addFile.files[0];
    if (!file) { setStatus('Error: choose an image to add', 'error'); el.addFile.focus(); return; }
    const form = new FormData();
    form.append('image', file, file.name);
    // The API stores an upload under its content hash and keeps no name: the page keeps the
    // file's own in metadata "filename" and shows it in place of the stored name (docs/api.md).
    if (file.name) form.append('metadata', JSON.stringify({ filename: file.name }));
    const desc = el.addDescription.value.trim();
    const cat = el.addCategory.value.trim();
    if (desc) form.append('description', desc);
    if (cat) form.append('category', cat);
    el.addSubmit.disabled = true;
    setStatus(`Adding ${file.name}…`, 'busy');
    try {
      const res = await api('/v1/images', { method: 'POST', form });
      const rec = res.image;
      revokeBlobs(el.addResult);
      el.addResult.replaceChildren();
      const p = document.createElement('p');
      p.textContent = res.created
        ? `Added ${file.name} as #${rec.id}.`
        : `Already in the collection as #${rec.id} (its metadata is unchanged).`;
      el.addResult.appendChild(p);
      const list = document.createElement('ul');
      list.className = 'grid small';
      list.appendChild(makeTile(rec));
      el.addResult.appendChild(list);
      el.addResult.dataset.id = String(rec.id);
      el.addResult.dataset.created = String(res.created);
      setStatus(p.textContent, 'ok');
      el.addForm.reset();
      await loadStats();
      if (state.browseLoaded) loadBrowse(state.browseAfter, state.browseStack);
    } catch (err) {
      showError(err);
    } finally {
      el.addSubmit.disabled = false;
    }
  }

  // ---- views -------------------------------------------------------------------------------

  function showView(name) {
    for (const tab of document.querySelectorAll('.tab')) {
      const on = tab.dataset.view === name;
      tab.setAttribute('aria-pressed', String(on));
      $(`view-${tab.dataset.view}`).hidden = !on;
    }
    // The last view's message ("10 results like #20") does not describe this one.
    if (el.status.dataset.kind !== 'busy') clearStatus();
    if (name === 'browse' && !state.browseLoaded) browseFromStart();
  }

  // ---- wiring ------------------------------------------------------------------------------

  function init() {
    try { state.apiKey = localStorage.getItem(KEY_STORAGE) || ''; } catch (_) { state.apiKey = ''; }
    el.apiKey.value = state.apiKey;

    // An upload the browser cannot show (the server may still read it) hides the preview.
    el.queryImage.addEventListener('error', () => { el.queryImage.hidden = true; });
    el.queryImage.addEventListener('load', () => { el.queryImage.hidden = false; });

    el.keyForm.addEventListener('submit', (e) => {
      e.preventDefault();
      state.apiKey = el.apiKey.value.trim();
      try {
        if (state.apiKey) localStorage.setItem(KEY_STORAGE, state.apiKey);
        else localStorage.removeItem(KEY_STORAGE);
      } catch (_) { /* storage unavailable: kept for this page only */ }
      setStatus(state.apiKey ? 'API key saved in this browser.' : 'API key cleared.', 'ok');
      $('settings').open = false;
      loadStats();
    });
    el.keyClear.addEventListener('click', () => {
      el.apiKey.value = '';
      el.keyForm.requestSubmit();
    });

    for (const tab of document.querySelectorAll('.tab')) {
      tab.addEventListener('click', () => showView(tab.dataset.view));
    }

    el.chooseFile.addEventListener('click', () => el.fileInput.click());
    el.takePhoto.addEventListener('click', () => el.cameraInput.click());
    for (const input of [el.fileInput, el.cameraInput]) {
      input.addEventListener('change', () => {
        searchByFile(input.files[0]);
        input.value = '';
      });
    }
    // "Take photo" only where there is a camera (or a touch device whose picker offers one).
    el.takePhoto.hidden = true;
    if (window.matchMedia && matchMedia('(pointer: coarse)').matches) el.takePhoto.hidden = false;
    if (navigator.mediaDevices && navigator.mediaDevices.enumerateDevices) {
      navigator.mediaDevices.enumerateDevices()
        .then((ds) => { if (ds.some((d) => d.kind === 'videoinput')) el.takePhoto.hidden = false; })
        .catch(() => {});
    }

    // Drag and drop: on the drop zone, and anywhere else on the search view so a missed drop
    // never navigates away from the page.
    const dz = el.dropZone;
    let depth = 0;
    dz.addEventListener('dragenter', (e) => { e.preventDefault(); depth++; dz.classList.add('over'); });
    dz.addEventListener('dragleave', () => { if (--depth <= 0) { depth = 0; dz.classList.remove('over'); } });
    window.addEventListener('dragover', (e) => { e.preventDefault(); });
    window.addEventListener('drop', (e) => {
      e.preventDefault();
      depth = 0;
      dz.classList.remove('over');
      if (e.target instanceof Element && e.target.closest('#view-add')) {
        const f = firstImageFile(e.dataTransfer);
        if (f) { const dt = new DataTransfer(); dt.items.add(f); el.addFile.files = dt.files; }
        return;
      }
      const f = firstImageFile(e.dataTransfer);
      if (f) searchByFile(f);
      else setStatus('Error: nothing dropped was an image file', 'error');
    });
    dz.addEventListener('keydown', (e) => {
      if ((e.key === 'Enter' || e.key === ' ') && e.target === dz) { e.preventDefault(); el.fileInput.click(); }
    });

    // Paste: an image on the clipboard searches by it (not while typing into a field).
    document.addEventListener('paste', (e) => {
      const t = e.target;
      const f = firstImageFile(e.clipboardData);
      if (!f) return;
      if (t instanceof HTMLElement && (t.matches('input, textarea') || t.isContentEditable)) {
        if (!t.closest('#view-add')) return;
      }
      e.preventDefault();
      if (!$('view-add').hidden) {
        const dt = new DataTransfer(); dt.items.add(f); el.addFile.files = dt.files;
        setStatus('Pasted image ready to add.', 'ok');
      } else {
        searchByFile(f);
      }
    });

    el.searchOptions.addEventListener('submit', (e) => {
      e.preventDefault();
      if (state.lastQuery) searchBy(state.lastQuery, false);
    });
    const rerun = () => { if (state.lastQuery) searchBy(state.lastQuery, false); };
    el.k.addEventListener('change', rerun);
    el.category.addEventListener('change', rerun);
    el.minScore.addEventListener('input', showMin);
    // Each arrow key on the slider is a change: search once the keys stop (a search by file
    // re-embeds the image every time).
    let minTimer = null;
    el.minScore.addEventListener('change', () => {
      showMin();
      clearTimeout(minTimer);
      minTimer = setTimeout(rerun, 400);
    });
    setMetric('cosine');

    el.browseCategory.addEventListener('change', browseFromStart);
    el.browseLimit.addEventListener('change', browseFromStart);
    el.browseFirst.addEventListener('click', browseFromStart);
    el.browseNext.addEventListener('click', () => {
      if (state.browseNextAfter === null) return;
      loadBrowse(state.browseNextAfter, [...state.browseStack, state.browseAfter]);
    });
    el.browsePrev.addEventListener('click', () => {
      if (!state.browseStack.length) return;
      loadBrowse(state.browseStack[state.browseStack.length - 1], state.browseStack.slice(0, -1));
    });

    el.addForm.addEventListener('submit', addImage);

    loadStats();
  }

  init();
})();
