#!/usr/bin/env node
/**
 * Opens one study in OHIF Viewer v3 inside Debian's chromium (headless) and reports, as
 * one JSON object on stdout, what a radiologist would see:
 *
 *   node tests/ohif/driver.js '<json options>'
 *
 * Options (JSON):
 *   baseUrl         origin serving OHIF and /dicom-web (tests/dicomweb_proxy.py)
 *   studyUid        StudyInstanceUID to open
 *   outDir          folder for the screenshots (written as <name>.png)
 *   srSeries        series number of the SR to open (optional)
 *   srTexts         strings that must appear in the annotation text drawn for the SR
 *   scSeries        series number of the Secondary Capture overlays to open (optional)
 *   segSeries       series number of the lung SEG to open over the CT (optional)
 *   segLabels       segment labels the segmentation panel must list (optional)
 *   segScroll       after the SEG shows, scroll this many slices on (OHIF opens it at its
 *                   first frame, near the apex; the docs want a mid-lung slice)
 *   timeoutMs       per-step wait limit (default 45000)
 *   width, height   viewport of the page (default 1280 x 800)
 *   chromium        browser executable (default /usr/bin/chromium)
 *
 * The result: { ok, steps: {ct, sr, sc, seg}, toasts, pageErrors, consoleErrors, httpErrors,
 * screenshots, elapsedMs }. "ok" only says the driver ran to the end; the Python test
 * decides what passes. Every wait polls the page; no step sleeps a fixed time.
 */
'use strict';

const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

// Without the background-networking flags chromium keeps dialling Google services, which
// the closed network refuses; the GPU is absent, so cornerstone renders with SwiftShader.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// OHIF's first-visit guided tour would cover the viewport; it is skipped once shown.
const SHOWN_TOURS = ['basicViewerTour'];

function parseOptions(argv) {
  if (argv.length < 1) {
    throw new Error("usage: node driver.js '<json options>' (see the comment at the top)");
  }
  const opts = JSON.parse(argv[0]);
  for (const key of ['baseUrl', 'studyUid', 'outDir']) {
    if (!opts[key]) throw new Error(`option "${key}" is required`);
  }
  return {
    timeoutMs: 45000,
    width: 1280,
    height: 800,
    chromium: '/usr/bin/chromium',
    srTexts: [],
    ...opts,
  };
}

/**
 * OHIF's notifications (sonner toasts, as "<type>: <text>", type error/warning/info/success)
 * and error-boundary texts now on the page.
 */
async function visibleProblems(page) {
  return page.evaluate(() => {
    const texts = [];
    for (const el of document.querySelectorAll('[data-sonner-toast], [role="alert"], .toast')) {
      const t = (el.innerText || '').trim().replace(/\s*\n\s*/g, ': ');
      const type = el.getAttribute('data-type') || 'unknown';
      if (t) texts.push(`${type}: ${t}`);
    }
    const body = document.body ? document.body.innerText : '';
    for (const phrase of ['Something went wrong', 'Error loading', 'Failed to load']) {
      if (body.includes(phrase)) texts.push(`page text: ${phrase}`);
    }
    return texts;
  });
}

/** Annotation texts cornerstone draws in SVG over the viewports. */
async function annotationTexts(page) {
  return page.$$eval('[data-cy="viewport-pane"] svg text', els =>
    els.map(e => (e.textContent || '').trim()).filter(Boolean),
  );
}

/** Overlay texts in the corners of the active viewport (series description, image index). */
async function viewportOverlay(page) {
  return page.evaluate(() => {
    const out = {};
    for (const corner of ['top-left', 'top-right', 'bottom-left', 'bottom-right']) {
      const el = document.querySelector(`[data-cy="viewport-overlay-${corner}"]`);
      out[corner] = el ? el.innerText.replace(/\s+/g, ' ').trim() : '';
    }
    return out;
  });
}

/**
 * Fraction of the viewport canvas's pixels that are strongly coloured (a heat map), and of
 * pixels that are not black (anything rendered). Cornerstone draws each viewport into a
 * 2D canvas, so its pixels can be read back.
 */
async function canvasStats(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('[data-cy="viewport-pane"] canvas.cornerstone-canvas');
    if (!canvas || !canvas.width || !canvas.height) return null;
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    if (!ctx) return null;
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let coloured = 0;
    let lit = 0;
    const n = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const r = data[i], g = data[i + 1], b = data[i + 2];
      const hi = Math.max(r, g, b), lo = Math.min(r, g, b);
      if (hi > 24) lit++;
      if (hi - lo > 60) coloured++;
    }
    return { width: canvas.width, height: canvas.height, colouredFraction: coloured / n, litFraction: lit / n };
  });
}

/** Poll `probe` until `accept(value)` or the time runs out; returns the last value. */
async function pollUntil(page, probe, accept, timeoutMs, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let value = await probe();
  while (!accept(value) && Date.now() < deadline) {
    await page.waitForTimeout(intervalMs);
    value = await probe();
  }
  return value;
}

async function screenshot(page, opts, name, shots) {
  const file = path.join(opts.outDir, `${name}.png`);
  await page.screenshot({ path: file });
  shots.push(file);
}

function thumbnail(page, seriesNumber) {
  // Image series and SR ("no-image") thumbnails share the prefix; data-series is the
  // Series Number.
  return page.locator(`[data-cy^="study-browser-thumbnail"][data-series="${seriesNumber}"]`).first();
}

async function openCt(page, opts) {
  const url = `${opts.baseUrl}/viewer?StudyInstanceUIDs=${encodeURIComponent(opts.studyUid)}`;
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: opts.timeoutMs });
  await page.locator('[data-cy^="study-browser-thumbnail"]').first().waitFor({ timeout: opts.timeoutMs });
  const stats = await pollUntil(page, () => canvasStats(page), s => s && s.litFraction > 0.05, opts.timeoutMs);
  const thumbnails = await page.$$eval('[data-cy^="study-browser-thumbnail"]', els =>
    els.map(e => ({ series: e.getAttribute('data-series'), text: e.innerText.replace(/\s+/g, ' ').trim() })),
  );
  return { thumbnails, overlay: await viewportOverlay(page), canvas: stats };
}

async function openSr(page, opts) {
  const wanted = opts.srTexts;
  const drawn = t => t.length > 0 && wanted.every(w => t.some(x => x.includes(w)));
  const firstWait = Math.min(opts.timeoutMs, 15000);
  const recoveries = [];
  await thumbnail(page, opts.srSeries).dblclick({ timeout: opts.timeoutMs });
  let texts = await pollUntil(page, () => annotationTexts(page), drawn, firstWait);
  if (!drawn(texts)) {
    // Seen now and then under load: OHIF jumps to the key slice but draws nothing. Step
    // to the SR's next finding and back with the viewport's own arrows, as a reader would.
    recoveries.push('arrows');
    const right = page.locator('[data-cy="viewport-action-arrows-right"]').first();
    const left = page.locator('[data-cy="viewport-action-arrows-left"]').first();
    if (await right.isVisible()) {
      await right.click({ timeout: opts.timeoutMs });
      if (await left.isVisible()) await left.click({ timeout: opts.timeoutMs });
    }
    texts = await pollUntil(page, () => annotationTexts(page), drawn, firstWait);
  }
  if (!drawn(texts)) {
    recoveries.push('reopen');
    await thumbnail(page, opts.srSeries).dblclick({ timeout: opts.timeoutMs });
    texts = await pollUntil(page, () => annotationTexts(page), drawn, opts.timeoutMs);
  }
  const result = { annotationTexts: texts, recoveries, overlay: await viewportOverlay(page), canvas: await canvasStats(page) };
  // Longitudinal mode asks whether to track the SR's measurements; the banner would cover
  // the top of the viewport in the screenshot. "No" keeps the SR displayed read-only.
  const prompt = page.getByText('Do you want to continue tracking measurements', { exact: false });
  result.trackingPrompt = await prompt.isVisible();
  if (result.trackingPrompt) {
    await page.getByRole('button', { name: 'No', exact: true }).click({ timeout: opts.timeoutMs });
    await prompt.waitFor({ state: 'hidden', timeout: opts.timeoutMs });
    result.annotationTextsAfterPrompt = await annotationTexts(page);
  }
  result.pageText = (await page.innerText('body')).slice(0, 4000);
  return result;
}

async function openSc(page, opts) {
  await thumbnail(page, opts.scSeries).dblclick({ timeout: opts.timeoutMs });
  const stats = await pollUntil(page, () => canvasStats(page), s => s && s.colouredFraction > 0.001, opts.timeoutMs);
  // A series of several overlays opens OHIF's cine player over the image; close it so the
  // screenshot shows the overlay itself.
  const cineClose = page.locator('[data-cy="cine-player-close"]');
  if (await cineClose.isVisible()) await cineClose.click({ timeout: opts.timeoutMs });
  return { canvas: stats, overlay: await viewportOverlay(page) };
}

async function openSeg(page, opts) {
  await thumbnail(page, opts.segSeries).dblclick({ timeout: opts.timeoutMs });
  // OHIF asks before it loads a SEG over its source series.
  const prompt = page.getByText('Do you want to open this Segmentation?', { exact: false });
  await prompt.waitFor({ timeout: opts.timeoutMs });
  await page.getByRole('button', { name: 'Yes', exact: true }).click({ timeout: opts.timeoutMs });
  let stats = await pollUntil(page, () => canvasStats(page), s => s && s.colouredFraction > 0.001, opts.timeoutMs);
  const steps = Number(opts.segScroll || 0);
  if (steps > 0) {
    const before = (await viewportOverlay(page))['bottom-right'];
    const box = await page.locator('[data-cy="viewport-pane"]').first().boundingBox();
    await page.mouse.move(box.x + box.width / 2, box.y + box.height / 2);
    for (let i = 0; i < steps; i++) await page.mouse.wheel(0, 100);
    await pollUntil(page, () => viewportOverlay(page), o => o['bottom-right'] !== before, opts.timeoutMs);
    stats = await pollUntil(page, () => canvasStats(page), s => s && s.colouredFraction > 0.001, opts.timeoutMs);
  }
  // What the segmentation panel lists: each segment's label, as a reader sees them.
  const labels = opts.segLabels || [];
  let panelText = '';
  if (labels.length) {
    // The right side panel starts collapsed: open its segmentation tab to read the labels.
    const tab = page.locator('[data-cy*="egmentation"][data-cy$="-btn"]').first();
    if (await tab.count()) await tab.click({ timeout: opts.timeoutMs }).catch(() => {});
    panelText = await pollUntil(
      page,
      () => page.locator('body').innerText(),
      t => labels.every(label => t.includes(label)),
      opts.timeoutMs,
    ).catch(() => page.locator('body').innerText());
  }
  return {
    canvas: stats,
    overlay: await viewportOverlay(page),
    segmentLabelsShown: labels.filter(label => panelText.includes(label)),
  };
}

async function main() {
  const started = Date.now();
  const opts = parseOptions(process.argv.slice(2));
  fs.mkdirSync(opts.outDir, { recursive: true });
  const report = {
    ok: false, steps: {}, toasts: [], pageErrors: [], consoleErrors: [], consoleWarnings: [], httpErrors: [],
    screenshots: [],
  };
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ohif-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: opts.chromium,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: opts.width, height: opts.height },
    });
    await context.addInitScript(tours => {
      window.localStorage.setItem('shownTours', JSON.stringify(tours));
    }, SHOWN_TOURS);
    const page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', e => report.pageErrors.push(String(e.message).slice(0, 500)));
    page.on('console', m => {
      if (m.type() === 'error') report.consoleErrors.push(m.text().slice(0, 500));
      // Warnings explain a step that timed out (e.g. an SR OHIF could not map to images).
      if (m.type() === 'warning' && report.consoleWarnings.length < 50) {
        report.consoleWarnings.push(m.text().slice(0, 300));
      }
    });
    page.on('response', r => {
      if (r.status() >= 400) report.httpErrors.push(`${r.status()} ${r.request().method()} ${r.url().slice(0, 300)}`);
    });

    report.steps.ct = await openCt(page, opts);
    report.toasts.push(...(await visibleProblems(page)));
    await screenshot(page, opts, 'ct', report.screenshots);

    if (opts.srSeries !== undefined && opts.srSeries !== null) {
      report.steps.sr = await openSr(page, opts);
      report.toasts.push(...(await visibleProblems(page)));
      await screenshot(page, opts, 'sr', report.screenshots);
    }
    if (opts.scSeries !== undefined && opts.scSeries !== null) {
      report.steps.sc = await openSc(page, opts);
      report.toasts.push(...(await visibleProblems(page)));
      await screenshot(page, opts, 'sc', report.screenshots);
    }
    if (opts.segSeries !== undefined && opts.segSeries !== null) {
      report.steps.seg = await openSeg(page, opts);
      report.toasts.push(...(await visibleProblems(page)));
      await screenshot(page, opts, 'seg', report.screenshots);
    }
    report.ok = true;
  } catch (err) {
    report.error = String((err && err.stack) || err).slice(0, 2000);
    try {
      const page = context && context.pages()[0];
      if (page) {
        report.toasts.push(...(await visibleProblems(page)));
        await screenshot(page, opts, 'failure', report.screenshots);
      }
    } catch (_) {
      // The browser is gone; the error above says why.
    }
  } finally {
    if (context) await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  report.toasts = [...new Set(report.toasts)];
  report.elapsedMs = Date.now() - started;
  process.stdout.write(JSON.stringify(report) + '\n');
}

main().catch(err => {
  process.stdout.write(JSON.stringify({ ok: false, error: String((err && err.stack) || err) }) + '\n');
  process.exitCode = 2;
});
