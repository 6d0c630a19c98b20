// Drives Debian's chromium (through playwright-core) against a running `lookalike serve` and
// checks the web page end to end: search by file, drag and drop, paste, "more like this" by
// click and by keyboard, the category filter, the minimum-similarity slider, adding an image,
// browsing page by page, an API error shown in the status area, and a phone-sized layout.
//
//   node browser.mjs --base http://127.0.0.1:PORT --query Q.jpg --add A.jpg --out DIR [--k 10]
//                    [--api-key KEY [--mode private]] [--expect ID:SCORE,ID:SCORE,...]
//
// --expect: the ranking the first search (by --query) must show, e.g. from `lookalike search`.
// With --api-key (a server started with --api-key KEY), adding without the key must show the
// API's 401 in the status area, with a wrong key its 403, and the key saved in the page must
// survive a reload. --mode private runs the short check for a server with --api-key KEY --private
// instead: the page shows the 401, and with the key saved searches and thumbnails work.
// --mode l2 --total N: a collection with metric l2 of N images (N = a page of 12): scores are
// distances (ascending, labelled so, bars shrinking), the slider a maximum distance, and browse
// shows "Page 1 of 1 (N images)" with Next disabled. --mode empty: a server on a folder with no
// collection yet: a search says the collection is empty and shows no timings.
// The collection must hold at least k images in several categories (metadata "category"), and
// --add must be a photo not in it. Screenshots (PNG) go to DIR. Exit 0 when every check passes,
// 1 with "FAIL: ..." otherwise.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const opts = { k: '10', chromium: '/usr/bin/chromium' };
for (let i = 2; i < process.argv.length; i += 2) {
  const key = process.argv[i].replace(/^--/, '');
  if (process.argv[i + 1] === undefined) throw new Error(`${process.argv[i]} needs a value`);
  opts[key] = process.argv[i + 1];
}
for (const need of ['base', 'query', 'out', ...(opts.mode && opts.mode !== 'main' ? [] : ['add'])]) {
  if (!opts[need]) {
    console.error(`usage: node browser.mjs --base URL --query IMG --add IMG --out DIR [--k N]\nmissing --${need}`);
    process.exit(2);
  }
}
const BASE = opts.base.replace(/\/$/, '');
const K = parseInt(opts.k, 10);
const OUT = opts.out;
const API_KEY = opts['api-key'] || '';
const MODE = opts.mode || 'main';  // main | private (--api-key KEY --private) | l2 | empty
if (MODE === 'private' && !API_KEY) throw new Error('--mode private needs --api-key');
const ADDED_CATEGORY = 'test-added';
const ADDED_DESCRIPTION = `added by the browser test ${Date.now()}`;
const WAIT = 60_000;  // a slow shared machine: embedding an upload can take a while
fs.mkdirSync(OUT, { recursive: true });

class CheckFailed extends Error {}
function check(cond, message) {
  if (!cond) throw new CheckFailed(message);
}
const t0 = Date.now();
function step(name) {
  console.log(`[${((Date.now() - t0) / 1000).toFixed(1)} s] ${name}`);
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lookalike-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: opts.chromium,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
  timeout: WAIT,
});
context.setDefaultTimeout(WAIT);
const page = context.pages()[0] || await context.newPage();

const pageErrors = [];
const foreignRequests = [];
const failedResponses = [];
let searchRequests = 0;
page.on('pageerror', (err) => pageErrors.push(String(err)));
page.on('console', (msg) => { if (msg.type() === 'error') console.log(`  console error: ${msg.text()}`); });
page.on('request', (req) => {
  const url = req.url();
  if (!url.startsWith(BASE + '/') && !url.startsWith('blob:') && !url.startsWith('data:')) foreignRequests.push(url);
  if (url.startsWith(BASE + '/v1/search')) searchRequests += 1;
});
page.on('response', (res) => {
  if (res.status() >= 400) failedResponses.push(`${res.status()} ${res.request().method()} ${res.url()}`);
});

async function shot(name, fullPage = true) {
  const file = path.join(OUT, `${name}.png`);
  await page.screenshot({ path: file, fullPage });
  console.log(`  screenshot ${file}`);
}

// The search the page finished last: #results carries data-seq (increasing) and data-state.
async function resultsSeq() {
  return parseInt(await page.locator('#results').getAttribute('data-seq') || '0', 10);
}
async function waitSearch(before, what) {
  try {
    await page.waitForFunction((b) => {
      const r = document.getElementById('results');
      return parseInt(r.dataset.seq || '0', 10) > b;
    }, before, { timeout: WAIT });
  } catch (e) {
    throw new CheckFailed(`${what}: no search finished within ${WAIT / 1000} s ` +
                          `(status: "${await page.locator('#status').innerText()}")`);
  }
  const state = await page.locator('#results').getAttribute('data-state');
  const status = await page.locator('#status').innerText();
  check(state === 'ok', `${what}: the search failed; status area says "${status}"`);
  return readResults();
}
async function readResults() {
  return page.$$eval('#results [data-testid=result]', (tiles) => tiles.map((t) => ({
    id: Number(t.dataset.id),
    score: Number(t.dataset.score),
    scoreText: t.querySelector('[data-testid=score]')?.textContent ?? '',
    category: t.dataset.category,
    categoryText: t.querySelector('[data-testid=category]')?.textContent ?? '',
    thumb: t.querySelector('img')?.getAttribute('src') ?? '',
    thumbLoaded: !!t.querySelector('img')?.complete && t.querySelector('img').naturalWidth > 0,
    open: t.querySelector('a.open')?.getAttribute('href') ?? '',
  })));
}
function checkScores(results, what, min = -1) {
  for (const r of results) {
    const shown = parseFloat(r.scoreText);
    check(Number.isFinite(r.score) && r.score >= -1 - 1e-6 && r.score <= 1 + 1e-6,
          `${what}: result #${r.id} has score ${r.score}, not a number in [-1, 1]`);
    check(Number.isFinite(shown) && Math.abs(shown - r.score) < 0.0011,
          `${what}: result #${r.id} shows score "${r.scoreText}" for ${r.score}`);
    check(r.score >= min - 1e-6, `${what}: result #${r.id} has score ${r.score} under min_score ${min}`);
  }
  for (let i = 1; i < results.length; i++) {
    check(results[i].score <= results[i - 1].score + 1e-6, `${what}: scores not in descending order`);
  }
}
async function waitThumbnails(selector, what) {
  // The page loads thumbnails lazily (loading="lazy"): one far below the viewport (a phone's
  // single column) never starts until a user scrolls to it, so scroll through them as a user would.
  const count = await page.locator(selector).count();
  for (let i = 0; i < count; i++) {
    await page.locator(selector).nth(i).scrollIntoViewIfNeeded().catch(() => {});
  }
  await page.evaluate(() => window.scrollTo(0, 0));
  try {
    await page.waitForFunction((sel) => [...document.querySelectorAll(sel)]
      .every((img) => img.complete && img.naturalWidth > 0), selector, { timeout: WAIT });
  } catch (e) {
    throw new CheckFailed(`${what}: thumbnails did not load (${selector})`);
  }
}
async function queryInfo() {
  return page.$eval('#results', (r) => ({ id: r.dataset.queryId, name: r.dataset.queryName }));
}

async function waitStatus(re, what) {
  try {
    await page.waitForFunction((src) => new RegExp(src).test(document.getElementById('status').textContent),
                               re.source, { timeout: WAIT });
  } catch (e) {
    throw new CheckFailed(`${what}: the status area says "${await page.locator('#status').innerText()}", expected ${re}`);
  }
  check(await page.locator('#status').isVisible(), `${what}: the status area is not visible`);
  console.log(`  status: ${await page.locator('#status').innerText()}`);
}
async function waitStats() {
  try {
    await page.waitForFunction(() => /\d+ images?/.test(document.getElementById('stats').textContent));
  } catch (e) {
    throw new CheckFailed(`GET /v1/stats never shown (status: "${await page.locator('#status').innerText()}")`);
  }
}
async function saveKey(key) {
  if (!(await page.locator('#api-key').isVisible())) await page.click('#settings summary');
  await page.fill('#api-key', key);
  await page.click('#api-key-save');
  await waitStatus(/API key saved/, 'save the API key');
}

// A server started with --api-key KEY --private: nothing under /v1 without the key, and with it
// thumbnails (fetched with the header) and searches work.
async function privateChecks() {
  step(`open ${BASE}/ (server with --private)`);
  const resp = await page.goto(BASE + '/', { waitUntil: 'load' });
  check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()} (the page needs no key)`);
  await waitStatus(/unauthorized/, 'private server without a key');
  await saveKey(API_KEY);
  await waitStats();
  const seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  const results = await waitSearch(seq, 'private search');
  check(results.length >= 1, 'private search: no results');
  checkScores(results, 'private search');
  await waitThumbnails('#results img', 'private search (thumbnails fetched with the key)');
  await page.waitForFunction(() => [...document.querySelectorAll('#results img')]
    .every((img) => img.src.startsWith('blob:') && img.complete && img.naturalWidth > 0))
    .catch(() => { throw new CheckFailed('private search: thumbnails not fetched with the key (blob: URLs)'); });
  await shot('private-search');
  for (const r of failedResponses) {
    check(r.includes('/v1/stats'), `private: unexpected failed request ${r}`);
  }
  failedResponses.length = 0;
}

async function sliderTo(value) {
  await page.$eval('#min-score', (el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, value);
}

// A collection with metric l2: scores are distances (lower is closer).
async function l2Checks() {
  step(`open ${BASE}/ (collection with metric l2)`);
  // Records what the page sends to /v1/search (multipart fields or JSON), for the checks below.
  await page.addInitScript(() => {
    window.__searches = [];
    const real = window.fetch;
    window.fetch = (url, init = {}) => {
      if (String(url).endsWith('/v1/search')) {
        const b = init.body;
        window.__searches.push(b instanceof FormData
          ? Object.fromEntries([...b.entries()].filter(([, v]) => typeof v === 'string'))
          : JSON.parse(b));
      }
      return real(url, init);
    };
  });
  await page.goto(BASE + '/', { waitUntil: 'load' });
  await waitStats();
  await page.waitForFunction(() => /\bl2\b/.test(document.getElementById('stats').textContent));
  await page.waitForFunction(() => document.getElementById('min-score-label').textContent === 'Maximum distance')
    .catch(() => { throw new CheckFailed('l2: the slider is not labelled "Maximum distance"'); });
  const slider = await page.$eval('#min-score', (e) => ({ min: e.min, max: e.max, value: e.value }));
  check(slider.min === '0' && slider.max === '2' && slider.value === '2', `l2: slider ${JSON.stringify(slider)}, expected 0..2 at 2`);
  check(await page.locator('#min-score-value').innerText() === 'any', 'l2: the slider does not start at "any"');

  step('l2: search by file shows distances, closest first');
  let seq = await resultsSeq();
  // The parameters of the last search the page sent (its fields other than the image).
  const lastSent = () => page.evaluate(() => window.__searches[window.__searches.length - 1]);
  await page.setInputFiles('#file-input', opts.query);
  let results = await waitSearch(seq, 'l2 search');
  check(results.length === K, `l2 search: ${results.length} results, expected ${K}`);
  let params = await lastSent();
  check(params && params.k === String(K) && !('min_score' in params),
        `l2 search: sent ${JSON.stringify(params)} with the slider at "any"`);
  if (opts.expect) {
    const want = opts.expect.split(',').map((e) => e.split(':').map(Number));
    check(want.every(([id, d], i) => results[i] && results[i].id === id && Math.abs(results[i].score - d) < 1e-4),
          `l2 search: the page shows ${JSON.stringify(results.map((r) => [r.id, r.score]))}, the CLI ${JSON.stringify(want)}`);
  }
  const tiles = await page.$$eval('#results [data-testid=result]', (ts) => ts.map((t) => ({
    kind: t.dataset.scoreKind, title: t.querySelector('.score').title,
    bar: parseFloat(t.querySelector('.bar > span').style.width),
    label: t.querySelector('.tile-main').getAttribute('aria-label') })));
  for (let i = 0; i < results.length; i++) {
    check(tiles[i].kind === 'distance' && /distance/i.test(tiles[i].title) && !/similarity/i.test(tiles[i].title),
          `l2: tile ${i} says "${tiles[i].title}" (${tiles[i].kind}), expected a distance`);
    check(/distance \d/.test(tiles[i].label) && !/similarity/.test(tiles[i].label), `l2: tile ${i} aria-label "${tiles[i].label}"`);
    if (i > 0) {
      check(results[i].score >= results[i - 1].score - 1e-6, `l2: distances not ascending: ${results.map((r) => r.score)}`);
      check(tiles[i].bar <= tiles[i - 1].bar + 1e-6, `l2: the bar grows with the distance: ${tiles.map((t) => t.bar)}`);
    }
  }
  check(tiles[0].bar > tiles[tiles.length - 1].bar, `l2: bars all ${tiles[0].bar}%`);
  await waitThumbnails('#results img', 'l2 search');
  await shot('l2-1-search');

  step('l2: the slider is a maximum distance');
  const all = results;
  const max = Math.round(((all[0].score + all[all.length - 1].score) / 2) * 100) / 100;
  seq = await resultsSeq();
  await sliderTo(max);
  results = await waitSearch(seq, `max distance ${max}`);
  params = await lastSent();
  check(params && Number(params.min_score) === max, `l2: sent ${JSON.stringify(params)}, expected min_score ${max}`);
  check(results.length >= 1 && results.length < all.length, `max distance ${max}: ${results.length} of ${all.length} results`);
  check(results.every((r) => r.score <= max + 1e-6), `max distance ${max}: results ${results.map((r) => r.score)} farther`);
  // The closest ones are kept, the farthest dropped.
  check(results.every((r, i) => r.id === all[i].id), 'max distance: not the closest of the unfiltered results');
  check((await page.locator('#min-score-value').innerText()) === max.toFixed(2), 'max distance: the value is not shown');
  console.log(`  max distance ${max}: ${results.length} of ${all.length} results`);
  await shot('l2-2-slider');
  seq = await resultsSeq();
  await sliderTo(2);
  results = await waitSearch(seq, 'max distance any');
  check(results.length === all.length, `max distance any: ${results.length} results`);

  step('l2: more like this keeps distances, ascending');
  seq = await resultsSeq();
  await page.locator(`#results [data-testid=result][data-id="${all[0].id}"] .tile-main`).click();
  results = await waitSearch(seq, 'l2 more like this');
  for (let i = 1; i < results.length; i++) check(results[i].score >= results[i - 1].score - 1e-6, 'l2 by id: not ascending');

  step('browse: a single page, exactly full');
  await page.click('#tab-browse');
  await page.waitForSelector('#browse-grid[data-seq]');
  const bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.selectOption('#browse-limit', '12');
  await page.waitForFunction((b) => Number(document.getElementById('browse-grid').dataset.seq) > b, bseq);
  const total = Number(opts.total);
  const count = await page.locator('#browse-grid [data-testid=result]').count();
  const info = await page.locator('#browse-info').innerText();
  check(count === total && info.startsWith(`Page 1 of 1 (${total} images)`), `l2 browse: ${count} tiles, info "${info}"`);
  check(await page.isDisabled('#browse-next'), `l2 browse: Next enabled on the only page (${info})`);
  await waitThumbnails('#browse-grid img', 'l2 browse');
  await shot('l2-3-browse-one-page');
}

// A server on a folder with no collection yet.
async function emptyChecks() {
  step(`open ${BASE}/ (no collection yet)`);
  await page.goto(BASE + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => /\b0 images\b/.test(document.getElementById('stats').textContent));
  const seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  await waitSearch(seq, 'search an empty collection');
  const empty = await page.locator('#results-empty').innerText();
  check(/collection is empty/.test(empty) && /add images/i.test(empty) && !/filter/.test(empty),
        `empty: the page says "${empty}", expected that the collection is empty`);
  check(/collection is empty/.test(await page.locator('#status').innerText()), 'empty: the status does not say so');
  const timings = await page.locator('#timings').innerText();
  check(timings.trim() === '' && !(await page.locator('#timings').isVisible()),
        `empty: timings "${timings}" shown for a search that never ran`);
  await shot('empty-1-search', false);
  await page.click('#tab-browse');
  await page.waitForSelector('#browse-grid[data-seq]', { state: 'attached' });  // empty: no height
  const info = await page.locator('#browse-info').innerText();
  check(/collection is empty/.test(info), `empty browse: "${info}"`);
  check(await page.isDisabled('#browse-next'), 'empty browse: Next enabled');
  await shot('empty-2-browse', false);
}

async function mainChecks() {
  step(`open ${BASE}/`);
  const resp = await page.goto(BASE + '/', { waitUntil: 'load' });
  check(resp && resp.status() === 200, `GET / answered ${resp && resp.status()}`);
  await waitStats();
  const categories = await page.$$eval('#category-filter option', (os) => os.map((o) => o.value).filter(Boolean));
  check(categories.length >= 2, `the category filter offers ${JSON.stringify(categories)}, expected >= 2 categories from /v1/stats`);
  check(await page.locator('#k-select').inputValue() === String(K), `k selector does not default to ${K}`);
  const camera = await page.$eval('#camera-input', (i) => [i.type, i.accept, i.getAttribute('capture')]);
  check(JSON.stringify(camera) === JSON.stringify(['file', 'image/*', 'environment']),
        `camera input is ${JSON.stringify(camera)}, expected type=file accept=image/* capture=environment`);
  console.log(`  stats: ${await page.locator('#stats').innerText()}; categories: ${categories.join(', ')}`);

  step('search by file picker');
  let seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  let results = await waitSearch(seq, 'search by file');
  check(results.length >= K, `search by file: ${results.length} result tiles, expected at least ${K}`);
  checkScores(results, 'search by file');
  let q = await queryInfo();
  check(q.name === path.basename(opts.query) && q.id === '', `search by file: query is ${JSON.stringify(q)}`);
  if (opts.expect) {
    // The ranking `lookalike search` gave for the same file: ids in order, scores to 1e-4.
    const want = opts.expect.split(',').map((e) => e.split(':').map(Number));
    const got = results.slice(0, want.length);
    check(got.length === want.length && want.every(([id, score], i) =>
      got[i].id === id && Math.abs(got[i].score - score) < 1e-4),
    `search by file: the page shows ${JSON.stringify(got.map((r) => [r.id, r.score]))}, ` +
    `the CLI ranks ${JSON.stringify(want)}`);
  }
  check(results.every((r) => r.thumb.includes('/thumbnail') && r.open.includes('/file')),
        'search by file: tiles do not use thumbnail_url / file_url');
  await waitThumbnails('#results img', 'search by file');
  await page.waitForFunction(() => document.getElementById('query-image').naturalWidth > 0);
  const timings = await page.locator('#timings').innerText();
  for (const t of ['decode', 'embed', 'search', 'total']) {
    check(new RegExp(`${t} \\d+(\\.\\d+)? ms`).test(timings), `timings "${timings}" lack ${t} ms`);
  }
  console.log(`  ${results.length} results, top ${results[0].score} (${results[0].category}); ${timings.replace(/\n/g, ' ')}`);
  await shot('1-search-by-file');

  step('click a result: more like this');
  const clicked = results[1];
  seq = await resultsSeq();
  await page.locator(`#results [data-testid=result][data-id="${clicked.id}"] .tile-main`).click();
  results = await waitSearch(seq, 'more like this (click)');
  q = await queryInfo();
  check(q.id === String(clicked.id), `more like this: query id is "${q.id}", expected ${clicked.id}`);
  check(results.length >= 1, 'more like this: no results');
  checkScores(results, 'more like this');
  check(await page.locator('#query-caption').innerText().then((t) => t.includes(`#${clicked.id}`)),
        'more like this: the query panel does not show the clicked image');
  await waitThumbnails('#results img', 'more like this');
  // A search by id decodes and embeds nothing: "–" for those stages, not "0.0 ms".
  const idTimings = await page.locator('#timings').innerText();
  check(/decode –/.test(idTimings) && /embed –/.test(idTimings) &&
        /search \d+(\.\d+)? ms/.test(idTimings) && /total \d+(\.\d+)? ms/.test(idTimings),
        `more like this: timings "${idTimings}", expected decode – embed – and search/total in ms`);
  await shot('2-more-like-this');

  step('keyboard: Tab to a result and press Enter');
  const target = results[results.length - 1];
  const targetButton = page.locator(`#results [data-testid=result][data-id="${target.id}"] .tile-main`);
  await targetButton.focus();
  seq = await resultsSeq();
  await page.keyboard.press('Enter');
  results = await waitSearch(seq, 'more like this (Enter)');
  q = await queryInfo();
  check(q.id === String(target.id), `Enter on a result: query id is "${q.id}", expected ${target.id}`);
  // The tile that had the focus is gone: the focus moves to the results heading, not the body.
  const focused = await page.evaluate(() => {
    const a = document.activeElement;
    return { id: a.id, tag: a.tagName, visible: !!a.offsetParent };
  });
  check(focused.id === 'results-heading' && focused.visible,
        `Enter on a result: the focus went to ${JSON.stringify(focused)}, not the results heading`);
  await shot('3a-focus-after-enter', false);
  // Space does the same (a button's own key).
  const spaceTarget = results[0];
  await page.locator(`#results [data-testid=result][data-id="${spaceTarget.id}"] .tile-main`).focus();
  seq = await resultsSeq();
  await page.keyboard.press(' ');
  results = await waitSearch(seq, 'more like this (Space)');
  check((await queryInfo()).id === String(spaceTarget.id), 'Space on a result: wrong query');
  check(await page.evaluate(() => document.activeElement.id) === 'results-heading',
        'Space on a result: the focus is not on the results heading');
  // A real Tab from the previous element reaches the tiles and shows a focus ring.
  await page.locator('#search-again').focus();
  await page.keyboard.press('Tab');
  const tabbed = await page.evaluate(() => {
    const a = document.activeElement;
    return { inTile: !!a.closest('[data-testid=result]'), outline: getComputedStyle(a).outlineStyle,
             ariaLabel: a.getAttribute('aria-label') || '' };
  });
  console.log(`  focus after Tab: ${JSON.stringify(tabbed)}`);
  check(tabbed.inTile, 'keyboard: Tab from "Search again" does not reach the first result tile');
  check(tabbed.outline !== 'none', 'keyboard: the focused result tile shows no outline');
  await shot('3-keyboard-focus', false);

  step('category filter');
  // The category least present in the current results, so the filter has something to change.
  const counts = Object.fromEntries(categories.map((c) => [c, 0]));
  for (const r of results) if (r.category in counts) counts[r.category]++;
  const category = categories.filter((c) => c !== ADDED_CATEGORY).sort((a, b) => counts[a] - counts[b])[0];
  seq = await resultsSeq();
  await page.selectOption('#category-filter', category);
  results = await waitSearch(seq, `filter ${category} (more like this)`);
  check(results.length >= 1, `filter ${category}: no results`);
  for (const r of results) {
    check(r.category === category && r.categoryText === category,
          `filter ${category}: result #${r.id} has category "${r.category}" / shows "${r.categoryText}"`);
  }
  checkScores(results, `filter ${category}`);
  console.log(`  more like #${q.id} in ${category}: ${results.length} results`);
  seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  results = await waitSearch(seq, `filter ${category} (upload)`);
  check(results.length >= 1, `filter ${category} (upload): no results`);
  for (const r of results) {
    check(r.category === category, `filter ${category} (upload): result #${r.id} has category "${r.category}"`);
  }
  console.log(`  upload in ${category}: ${results.length} results`);
  await waitThumbnails('#results img', 'category filter');
  await shot('4-category-filter');

  step('minimum similarity slider');
  seq = await resultsSeq();
  await page.selectOption('#category-filter', '');
  results = await waitSearch(seq, 'clear filter');
  const all = results;
  const min = Math.round(((all[0].score + all[all.length - 1].score) / 2) * 100) / 100;
  seq = await resultsSeq();
  await page.$eval('#min-score', (el, v) => {
    el.value = String(v);
    el.dispatchEvent(new Event('input', { bubbles: true }));
    el.dispatchEvent(new Event('change', { bubbles: true }));
  }, min);
  results = await waitSearch(seq, `min_score ${min}`);
  checkScores(results, `min_score ${min}`, min);
  check(results.length < all.length, `min_score ${min}: ${results.length} results, not fewer than ${all.length}`);
  check((await page.locator('#min-score-value').innerText()).includes(min.toFixed(2)),
        'min_score: the slider value is not shown');
  console.log(`  min_score ${min}: ${results.length} of ${all.length} results`);
  seq = await resultsSeq();
  await page.$eval('#min-score', (el) => { el.value = '0'; el.dispatchEvent(new Event('change', { bubbles: true })); });
  await waitSearch(seq, 'min_score reset');

  step('slider moved by the keyboard: one search once the keys stop');
  const searchesBefore = searchRequests;
  seq = await resultsSeq();
  await page.focus('#min-score');
  for (let i = 0; i < 6; i++) await page.keyboard.press('ArrowRight');
  await waitSearch(seq, 'slider keys');
  await page.waitForTimeout(800);
  check(searchRequests - searchesBefore === 1,
        `slider keys: ${searchRequests - searchesBefore} searches for 6 key presses, expected 1`);
  seq = await resultsSeq();
  await page.$eval('#min-score', (el) => { el.value = '0'; el.dispatchEvent(new Event('change', { bubbles: true })); });
  await waitSearch(seq, 'min_score reset after keys');

  step('k selector');
  seq = await resultsSeq();
  await page.selectOption('#k-select', '5');
  results = await waitSearch(seq, 'k=5');
  check(results.length === 5, `k=5: ${results.length} results`);
  seq = await resultsSeq();
  await page.selectOption('#k-select', String(K));
  await waitSearch(seq, `k=${K}`);

  step('add an image with description and category');
  await page.click('#tab-add');
  await page.setInputFiles('#add-file', opts.add);
  await page.fill('#add-description', ADDED_DESCRIPTION);
  await page.fill('#add-category', ADDED_CATEGORY);
  if (API_KEY) {
    // The server wants the key for writes: without it the page shows the API's 401.
    await page.click('#add-submit');
    await waitStatus(/unauthorized/, 'add without the API key');
    await shot('5-add-unauthorized', false);
    await saveKey('wrong-' + API_KEY);
    await page.click('#add-submit');
    await waitStatus(/forbidden/, 'add with a wrong API key');
    await saveKey(API_KEY);
  }
  await page.click('#add-submit');
  try {
    await page.waitForSelector('#add-result[data-id]', { timeout: WAIT });
  } catch (e) {
    throw new CheckFailed(`add: no result (status: "${await page.locator('#status').innerText()}")`);
  }
  const addedId = Number(await page.locator('#add-result').getAttribute('data-id'));
  const created = await page.locator('#add-result').getAttribute('data-created');
  check(created === 'true', `add: created=${created}, expected a new image (is --add already indexed?)`);
  check((await page.locator('#status').innerText()).includes(`#${addedId}`), 'add: status does not name the new id');
  await page.waitForFunction((c) => [...document.querySelectorAll('#browse-category option')]
    .some((o) => o.value === c), ADDED_CATEGORY);
  await waitThumbnails('#add-result img', 'add');
  // The upload is stored under its content hash: the page keeps and shows the file's own name.
  const addedName = await page.locator('#add-result .name').innerText();
  check(addedName === path.basename(opts.add),
        `add: the new tile is named "${addedName}", expected the uploaded file's "${path.basename(opts.add)}"`);
  const addedRecord = await page.evaluate(async ([id, key]) =>
    (await fetch(`/v1/images/${id}`, { headers: key ? { Authorization: `Bearer ${key}` } : {} })).json(),
  [addedId, API_KEY]);
  check(addedRecord.metadata && addedRecord.metadata.filename === path.basename(opts.add) &&
        addedRecord.metadata.category === ADDED_CATEGORY &&
        addedRecord.metadata.description === ADDED_DESCRIPTION,
        `add: stored metadata ${JSON.stringify(addedRecord.metadata)} lacks filename/category/description`);
  console.log(`  added #${addedId} as ${addedName}`);
  await shot('5-add');
  if (API_KEY) {
    step('the API key survives a reload (localStorage)');
    await page.reload({ waitUntil: 'load' });
    await waitStats();
    check(await page.locator('#api-key').inputValue() === API_KEY, 'API key: not kept after a reload');
  }

  step('browse page by page, then filter to the added category');
  await page.click('#tab-browse');
  await page.waitForSelector('#browse-grid[data-seq]');
  let bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.selectOption('#browse-limit', '12');
  const waitBrowse = async (before, what) => {
    try {
      await page.waitForFunction((b) => Number(document.getElementById('browse-grid').dataset.seq) > b, before);
    } catch (e) {
      throw new CheckFailed(`${what}: page did not load (status: "${await page.locator('#status').innerText()}")`);
    }
    return page.$$eval('#browse-grid [data-testid=result]', (ts) => ts.map((t) => ({
      id: Number(t.dataset.id), category: t.dataset.category,
      text: t.innerText })));
  };
  let tiles = await waitBrowse(bseq, 'browse page 1 (12 per page)');
  check(tiles.length === 12, `browse: page 1 holds ${tiles.length} images, expected 12`);
  // Totals from GET /v1/stats: "Page 1 of M (T images)"; Next disabled on page M only.
  const total = await page.evaluate(async (key) =>
    (await (await fetch('/v1/stats', { headers: key ? { Authorization: `Bearer ${key}` } : {} })).json()).images,
  API_KEY);
  const pages = Math.ceil(total / 12);
  let info = await page.locator('#browse-info').innerText();
  check(info.startsWith(`Page 1 of ${pages} (${total} images)`), `browse: info "${info}", expected "Page 1 of ${pages} (${total} images)"`);
  check(!(await page.isDisabled('#browse-next')), 'browse: Next disabled on page 1');
  for (let n = 2; n <= pages; n++) {
    const before = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
    await page.click('#browse-next');
    tiles = await waitBrowse(before, `browse page ${n}`);
  }
  info = await page.locator('#browse-info').innerText();
  check(info.startsWith(`Page ${pages} of ${pages} (${total} images)`), `browse: last page info "${info}"`);
  check(await page.isDisabled('#browse-next'), `browse: Next enabled on the last page (${info})`);
  check(tiles.length === total - 12 * (pages - 1), `browse: the last page holds ${tiles.length} images`);
  console.log(`  ${info}`);
  bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.click('#browse-first');
  tiles = await waitBrowse(bseq, 'browse first page');
  const page1 = tiles.map((t) => t.id);
  bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.click('#browse-next');
  tiles = await waitBrowse(bseq, 'browse page 2');
  check(tiles.length >= 1 && tiles[0].id > Math.max(...page1), `browse: page 2 ${JSON.stringify(tiles.map((t) => t.id))} does not follow page 1 ${JSON.stringify(page1)}`);
  bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.click('#browse-prev');
  tiles = await waitBrowse(bseq, 'browse previous page');
  check(JSON.stringify(tiles.map((t) => t.id)) === JSON.stringify(page1), 'browse: previous page is not page 1');
  bseq = Number(await page.locator('#browse-grid').getAttribute('data-seq'));
  await page.selectOption('#browse-category', ADDED_CATEGORY);
  tiles = await waitBrowse(bseq, `browse ${ADDED_CATEGORY}`);
  check(tiles.some((t) => t.id === addedId && t.category === ADDED_CATEGORY && t.text.includes(ADDED_DESCRIPTION)),
        `browse ${ADDED_CATEGORY}: #${addedId} with its description not found among ${JSON.stringify(tiles)}`);
  check(tiles.every((t) => t.category === ADDED_CATEGORY), `browse ${ADDED_CATEGORY}: other categories shown`);
  check(tiles.some((t) => t.id === addedId && t.text.includes(path.basename(opts.add))),
        `browse ${ADDED_CATEGORY}: #${addedId} is not shown under its file name ${path.basename(opts.add)}`);
  await waitThumbnails('#browse-grid img', 'browse');
  await shot('6-browse');

  step('search by the added image from the browse grid');
  seq = await resultsSeq();
  await page.locator(`#browse-grid [data-testid=result][data-id="${addedId}"] .tile-main`).click();
  results = await waitSearch(seq, 'more like the added image');
  check(await page.locator('#view-search').isVisible(), 'clicking a browsed image does not show the search view');
  check((await queryInfo()).id === String(addedId), 'more like the added image: wrong query id');

  step('drag and drop (DataTransfer built in the page from fetched bytes)');
  seq = await resultsSeq();
  await page.evaluate(async (url) => {
    const blob = await (await fetch(url)).blob();
    const file = new File([blob], 'dropped.jpg', { type: blob.type || 'image/jpeg' });
    const dt = new DataTransfer();
    dt.items.add(file);
    const zone = document.getElementById('drop-zone');
    for (const type of ['dragenter', 'dragover', 'drop']) {
      zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));
    }
  }, `${BASE}/v1/images/${addedId}/file`);
  results = await waitSearch(seq, 'drop');
  q = await queryInfo();
  check(q.name === 'dropped.jpg', `drop: query name is "${q.name}"`);
  check(results.length >= K, `drop: ${results.length} results`);
  check(results[0].id === addedId && results[0].score > 0.99,
        `drop: the dropped bytes of #${addedId} do not find it first (${JSON.stringify(results[0])})`);
  checkScores(results, 'drop');
  await waitThumbnails('#results img', 'drop');
  await shot('7-drop');

  step('paste from the clipboard');
  seq = await resultsSeq();
  await page.evaluate(async (url) => {
    const blob = await (await fetch(url)).blob();
    const dt = new DataTransfer();
    dt.items.add(new File([blob], 'pasted.jpg', { type: 'image/jpeg' }));
    document.body.dispatchEvent(new ClipboardEvent('paste', { bubbles: true, cancelable: true, clipboardData: dt }));
  }, results[1].open.startsWith('http') ? results[1].open : BASE + results[1].open);
  results = await waitSearch(seq, 'paste');
  check((await queryInfo()).name === 'pasted.jpg', 'paste: the query is not the pasted image');

  step('an API error is shown in the status area');
  seq = await resultsSeq();
  await page.evaluate(() => {
    const dt = new DataTransfer();
    dt.items.add(new File([new TextEncoder().encode('this is not an image')], 'fake.jpg', { type: 'image/jpeg' }));
    document.getElementById('drop-zone').dispatchEvent(new DragEvent('drop', { bubbles: true, cancelable: true, dataTransfer: dt }));
  });
  await page.waitForFunction((b) => Number(document.getElementById('results').dataset.seq) > b, seq);
  const status = page.locator('#status');
  const statusText = await status.innerText();
  check(await page.locator('#results').getAttribute('data-state') === 'error', 'bad image: the search did not fail');
  check(await status.isVisible() && /unsupported_media_type|unprocessable_image/.test(statusText),
        `bad image: status area says "${statusText}", expected the API error code`);
  check(await status.getAttribute('aria-live') === 'polite', 'status area is not aria-live');
  console.log(`  status: ${statusText}`);
  await shot('8-error', false);

  step('phone viewport 390x844');
  seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  await waitSearch(seq, 'phone search');
  await page.setViewportSize({ width: 390, height: 844 });
  await waitThumbnails('#results img', 'phone');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `phone: the page is ${overflow} px wider than the 390 px viewport`);
  const cols = await page.$eval('#results', (g) => getComputedStyle(g).gridTemplateColumns.split(' ').length);
  check(cols >= 2 && cols <= 3, `phone: the result grid has ${cols} columns`);
  await shot('9-phone-top', false);
  await shot('9-phone-full');
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.waitForTimeout(500);  // the drop zone's colour transition
  await shot('10-phone-dark', false);
  await page.emulateMedia({ colorScheme: 'light' });

  step('phone 375x740: the API key panel opens inside the screen');
  await page.setViewportSize({ width: 375, height: 740 });
  await page.evaluate(() => window.scrollTo(0, 0));
  if (!(await page.locator('#api-key').isVisible())) await page.click('#settings summary');
  for (const sel of ['#key-form', '#api-key', '#api-key-save', '#api-key-clear']) {
    const box = await page.locator(sel).boundingBox();
    check(box && box.x >= 0 && box.y >= 0 && box.x + box.width <= 375 + 0.5,
          `phone 375: ${sel} at ${JSON.stringify(box)} is not inside the 375 px viewport`);
  }
  const keyOverflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(keyOverflow <= 0, `phone 375: with the key panel open the page is ${keyOverflow} px too wide`);
  await page.focus('#api-key');
  await shot('12-phone-key-panel', false);
  await page.click('#settings summary');
  await page.setViewportSize({ width: 390, height: 844 });

  step('phone: a new search brings its results into view');
  await page.evaluate(() => window.scrollTo(0, 0));
  seq = await resultsSeq();
  await page.setInputFiles('#file-input', opts.query);
  await waitSearch(seq, 'phone search from the top');
  await page.waitForFunction(() => {
    const top = document.getElementById('results-heading').getBoundingClientRect().top;
    return top >= 0 && top < window.innerHeight / 2;
  }, null, { timeout: 5000 }).catch(() => {});
  const headingTop = await page.$eval('#results-heading', (h) => h.getBoundingClientRect().top);
  check(headingTop >= 0 && headingTop < 844 / 2, `phone: the results heading is at ${headingTop} px, not in view`);
  await shot('11-phone-results', false);

  // Expected failures: the bad image (415/422) and, with a key, the adds without it / with a wrong one.
  const unexpected = failedResponses.filter((r) => !/^(415|422) POST .*\/v1\/search$/.test(r) &&
                                                   !(API_KEY && /^(401|403) POST .*\/v1\/images$/.test(r)));
  check(unexpected.length === 0, `failed requests: ${unexpected.join('; ')}`);
}

let exitCode = 0;
try {
  if (MODE === 'private') await privateChecks();
  else if (MODE === 'l2') await l2Checks();
  else if (MODE === 'empty') await emptyChecks();
  else await mainChecks();
  check(pageErrors.length === 0, `JavaScript errors on the page: ${pageErrors.join('; ')}`);
  check(foreignRequests.length === 0, `the page fetched from other hosts: ${foreignRequests.join(', ')}`);
  step(`all browser checks passed (${MODE})`);
} catch (err) {
  exitCode = 1;
  const msg = err instanceof CheckFailed ? err.message : (err && err.stack) || String(err);
  console.error(`FAIL: ${msg}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join('; ')}`);
  if (failedResponses.length) console.error(`failed responses: ${failedResponses.join('; ')}`);
  try { await shot(`failure-${MODE}`); } catch (_) { /* the page may be gone */ }
} finally {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
process.exit(exitCode);
