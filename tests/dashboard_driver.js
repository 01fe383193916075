#!/usr/bin/env node
/**
 * Opens the node's dashboard in Debian's chromium (headless) and reports, as one JSON
 * object on stdout, what an admin sees: node tests/dashboard_driver.js '<json options>'
 *
 * Options: url (the dashboard), outDir (screenshot), clickRetryOfJob (a job id whose
 * "retry" button is clicked; then the page is read again), timelineOfJob (a job id whose
 * timeline is opened), chromium (browser executable).
 * Result: { ok, before: {summary, jobs, failures, series}, after, timeline, screenshot, errors }.
 */
'use strict';
const path = require('path');
const { chromium } = require(path.join(__dirname, 'ohif', 'node_modules', 'playwright-core'));

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

async function read(page) {
  const rows = (id) => page.$$eval(`#${id} tbody tr`, (trs) => trs.map((tr) =>
    Array.from(tr.querySelectorAll('td')).map((td) => td.innerText.trim())));
  return { summary: await page.innerText('#summary'), error: await page.innerText('#error'),
    jobs: await rows('jobs'), failures: await rows('failures'), series: await rows('series') };
}

function rowOfJob(page, table, jobId) {  // the row whose first cell is the job id
  return page.locator(`#${table} tbody tr`).filter({
    has: page.locator('td:first-child', { hasText: new RegExp('^' + jobId + '$') }) });
}

async function loadedAfter(page, since) {
  await page.waitForFunction((t) => Number(document.body.dataset.loaded || 0) > t, since, { timeout: 30000 });
}

(async () => {
  const opts = JSON.parse(process.argv[2]);
  const out = { ok: false, errors: [] };
  const browser = await chromium.launch({ executablePath: opts.chromium || '/usr/bin/chromium', args: ARGS });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on('pageerror', (e) => out.errors.push(String(e)));
    await page.goto(opts.url);
    await loadedAfter(page, 0);
    out.before = await read(page);
    if (opts.timelineOfJob !== undefined) {
      const row = rowOfJob(page, 'jobs', opts.timelineOfJob);
      await row.first().getByRole('button', { name: 'timeline' }).click();
      await page.waitForSelector('#timeline div', { timeout: 30000 });
      out.timeline = await page.innerText('#timeline');
    }
    if (opts.outDir) {
      out.screenshot = path.join(opts.outDir, 'dashboard.png');
      await page.screenshot({ path: out.screenshot, fullPage: true });
    }
    if (opts.clickRetryOfJob !== undefined) {
      const t = Date.now();
      const row = rowOfJob(page, 'failures', opts.clickRetryOfJob);
      await row.first().getByRole('button', { name: 'retry' }).click();
      await loadedAfter(page, t);
      out.after = await read(page);
    }
    out.ok = true;
  } catch (e) {
    out.errors.push(String(e));
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
})();
