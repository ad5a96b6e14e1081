#!/usr/bin/env node
// Converse.js in headless Chromium, driven by playwright-core, against a running Canto.
//
//   node tests/web/converse_flow.mjs --transport websocket|bosh --port HTTP_PORT \
//       --jid alice@localhost --password pw --contact bob@localhost \
//       --send 'text the browser sends' --expect 'text the browser must show' \
//       --screenshot target/web-artifacts/x.png [--tls] [--host 127.0.0.1] [--timeout 90]
//
// It serves tests/web (index.html and node_modules) on 127.0.0.1:0 with node's http module,
// opens the page in Chromium (/usr/bin/chromium, or $CHROMIUM), starts Converse with the
// WebSocket (ws://HOST:PORT/xmpp-websocket) or BOSH (http://HOST:PORT/http-bind) URL, and:
// (with --tls, wss:// and https:// to an HTTPS port; Chromium then takes any certificate, as
// Canto's generated ones are self-signed)
//   1. waits until Converse is connected and its roster is on the page;
//   2. opens the chat with --contact from its roster entry;
//   3. types --send in the chat's text area and presses Enter, and sees it on the page;
//   4. waits for --expect (sent by the other side, a TCP client the caller drives) on the page;
//   5. saves a screenshot (also when a step failed).
// One line per step on stdout; the last is "PASS" or "FAIL: why". Exit code 0 only on PASS.
// CANTO_WEB_DEBUG=1 also prints the page's console messages (errors and warnings always are).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = path.dirname(fileURLToPath(import.meta.url));
const started = Date.now();
const log = (msg) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${msg}`);

const { values: opt } = parseArgs({
    options: {
        transport: { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string' },
        jid: { type: 'string' },
        password: { type: 'string' },
        contact: { type: 'string' },
        send: { type: 'string' },
        expect: { type: 'string' },
        screenshot: { type: 'string' },
        timeout: { type: 'string', default: '90' },
        tls: { type: 'boolean', default: false },
    },
});
for (const k of ['transport', 'port', 'jid', 'password', 'contact', 'send', 'expect', 'screenshot']) {
    if (!opt[k]) {
        console.log(`FAIL: missing --${k}`);
        process.exit(2);
    }
}
if (!['websocket', 'bosh'].includes(opt.transport)) {
    console.log(`FAIL: --transport must be websocket or bosh, not ${opt.transport}`);
    process.exit(2);
}
const STEP = 30_000; // the longest any one step may take, in ms

let playwright;
try {
    playwright = await import('playwright-core');
} catch (e) {
    console.log(`FAIL: playwright-core is not installed (run \`npm ci\` in ${here}): ${e.message}`);
    process.exit(2);
}
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
if (!fs.existsSync(chromiumPath)) {
    console.log(`FAIL: no Chromium at ${chromiumPath} (apt-get install chromium, or set CHROMIUM)`);
    process.exit(2);
}
if (!fs.existsSync(path.join(here, 'node_modules/converse.js/dist/converse.min.js'))) {
    console.log(`FAIL: converse.js is not installed (run \`npm ci\` in ${here})`);
    process.exit(2);
}

// ---- the static server: tests/web, GET and HEAD only, nothing outside the directory ----

const TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
    '.mjs': 'text/javascript; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.json': 'application/json',
    '.map': 'application/json',
    '.wasm': 'application/wasm',
    '.svg': 'image/svg+xml',
    '.png': 'image/png',
    '.ico': 'image/x-icon',
    '.woff': 'font/woff',
    '.woff2': 'font/woff2',
    '.ttf': 'font/ttf',
    '.mp3': 'audio/mpeg',
    '.ogg': 'audio/ogg',
};

const dist = path.join(here, 'node_modules/converse.js/dist');

function serveStatic(req, res) {
    const url = new URL(req.url, 'http://x');
    let rel;
    try {
        rel = decodeURIComponent(url.pathname);
    } catch {
        res.writeHead(400).end();
        return;
    }
    if (rel === '/') rel = '/index.html';
    let file = path.join(here, path.normalize(rel));
    if ((req.method !== 'GET' && req.method !== 'HEAD') || !file.startsWith(here + path.sep)) {
        res.writeHead(403).end();
        return;
    }
    // Converse's OMEMO library fetches its WebAssembly relative to the page, not to the
    // script: a file not found here is looked up in Converse's dist.
    if (!fs.existsSync(file)) file = path.join(dist, path.normalize(rel));
    fs.stat(file, (err, st) => {
        if (err || !st.isFile()) {
            res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
            return;
        }
        res.writeHead(200, {
            'content-type': TYPES[path.extname(file)] || 'application/octet-stream',
            'content-length': st.size,
        });
        if (req.method === 'HEAD') res.end();
        else fs.createReadStream(file).pipe(res);
    });
}

const server = http.createServer(serveStatic);
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pageUrl = `http://127.0.0.1:${server.address().port}/index.html`;

// ---- the browser ----

let browser;
let page;
let failed = null;

async function cleanup() {
    try {
        if (browser) await browser.close();
    } catch {}
    server.close();
}

// The caller may stop us (a failed test): close the browser rather than orphan it.
for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, async () => {
        console.log(`FAIL: stopped by ${sig}`);
        await cleanup();
        process.exit(1);
    });
}
const overall = setTimeout(async () => {
    console.log(`FAIL: the flow took longer than ${opt.timeout} s`);
    if (page) await page.screenshot({ path: opt.screenshot }).catch(() => {});
    await cleanup();
    process.exit(1);
}, Number(opt.timeout) * 1000);

/** Runs one step; a failure ends the flow with its name. */
async function step(name, fn) {
    if (failed) return;
    try {
        const detail = await fn();
        log(`ok: ${name}${detail ? ` (${detail})` : ''}`);
    } catch (e) {
        failed = `${name}: ${String(e.message || e).split('\n')[0]}`;
        log(`FAILED: ${failed}`);
    }
}

const service =
    opt.transport === 'websocket'
        ? `${opt.tls ? 'wss' : 'ws'}://${opt.host}:${opt.port}/xmpp-websocket`
        : `${opt.tls ? 'https' : 'http'}://${opt.host}:${opt.port}/http-bind`;

await step(`launch ${chromiumPath}`, async () => {
    browser = await playwright.chromium.launch({
        executablePath: chromiumPath,
        headless: true,
        args: [
            '--no-sandbox',
            '--disable-gpu',
            '--disable-quic',
            '--no-first-run',
            // Without these Chromium phones home, and on a closed network its own
            // connections are refused.
            '--disable-background-networking',
            '--disable-component-update',
            '--disable-sync',
            // playwright gives every launch a fresh profile directory of its own.
            ...(opt.tls ? ['--ignore-certificate-errors'] : []),
        ],
    });
    return browser.version();
});

await step(`open ${pageUrl}`, async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Nothing but this page's server and Canto: Converse's control box shows sponsors' logos
    // from conversejs.org, which a test must not fetch (nor depend on).
    await context.route(
        (url) => url.hostname !== '127.0.0.1' && url.hostname !== 'localhost' && url.protocol !== 'data:',
        (route) => route.abort('blockedbyclient'),
    );
    page = await context.newPage();
    page.setDefaultTimeout(STEP);
    const verbose = process.env.CANTO_WEB_DEBUG === '1';
    page.on('console', (m) => {
        const external = m.text().includes('net::ERR_BLOCKED_BY_CLIENT');
        if (verbose || ((m.type() === 'error' || m.type() === 'warning') && !external)) {
            log(`browser ${m.type()}: ${m.text()}`);
        }
    });
    page.on('pageerror', (e) => log(`browser page error: ${e.message}`));
    page.on('response', (r) => {
        if (r.status() >= 400) log(`browser got HTTP ${r.status()} for ${r.url()}`);
    });
    page.on('requestfailed', (r) => {
        if (!r.failure()?.errorText.startsWith('net::ERR_BLOCKED_BY_CLIENT')) {
            log(`browser request failed: ${r.url()} ${r.failure()?.errorText}`);
        }
    });
    await page.goto(pageUrl);
    await page.waitForFunction(() => typeof window.cantoStart === 'function');
});

await step(`log in as ${opt.jid} over ${opt.transport} (${service})`, async () => {
    await page.evaluate(
        ({ transport, service, jid, password, debug }) =>
            window.cantoStart({
                ...(transport === 'websocket' ? { websocket_url: service } : { bosh_service_url: service }),
                jid,
                password,
                auto_login: true,
                // The URL is given: no XEP-0156 lookup at https://DOMAIN/.well-known/.
                discover_connection_methods: false,
                // A failed login should fail the test, not retry forever.
                auto_reconnect: false,
                assets_path: '/node_modules/converse.js/dist/',
                i18n: 'en',
                view_mode: 'fullscreen',
                play_sounds: false,
                show_desktop_notifications: false,
                allow_url_history_change: false,
                loglevel: debug ? 'debug' : 'info',
            }),
        {
            transport: opt.transport,
            service,
            jid: opt.jid,
            password: opt.password,
            debug: process.env.CANTO_WEB_DEBUG === '1',
        },
    );
    const handle = await page.waitForFunction(
        () =>
            window.cantoEvents.includes('connected') || window.cantoEvents.includes('disconnected')
                ? window.cantoEvents.slice()
                : null,
        null,
        { timeout: STEP },
    );
    const events = await handle.jsonValue();
    if (!events.includes('connected')) {
        throw new Error(`Converse disconnected before it was connected (events: ${events.join(', ')})`);
    }
    const kind = await page.evaluate((t) => window.cantoApi.connection.isType(t), opt.transport);
    if (!kind) throw new Error(`Converse is connected, but not over ${opt.transport}`);
    const bound = await page.evaluate(() => window.cantoApi.connection.get().jid);
    return `bound ${bound}`;
});

await step('the roster is on the page', async () => {
    await page.locator('converse-roster').first().waitFor({ state: 'visible' });
});

const contactLink = () => page.locator(`converse-roster a.open-chat[data-jid="${opt.contact}"]`).first();

await step(`${opt.contact} is in the roster`, async () => {
    await contactLink().waitFor({ state: 'visible' });
});

await step(`open the chat with ${opt.contact}`, async () => {
    await contactLink().click();
    await page.locator('converse-chat textarea.chat-textarea').first().waitFor({ state: 'visible' });
});

await step(`send "${opt.send}"`, async () => {
    const box = page.locator('converse-chat textarea.chat-textarea').first();
    await box.fill(opt.send);
    await box.press('Enter');
    await page.locator('converse-chat .chat-msg__text', { hasText: opt.send }).first().waitFor();
});

await step(`"${opt.expect}" is shown`, async () => {
    await page.locator('converse-chat .chat-msg__text', { hasText: opt.expect }).first().waitFor();
});

if (page) {
    // Also after a failure: the page as it was is the best clue.
    try {
        fs.mkdirSync(path.dirname(path.resolve(opt.screenshot)), { recursive: true });
        await page.screenshot({ path: opt.screenshot });
        log(`ok: screenshot ${opt.screenshot}`);
    } catch (e) {
        failed ??= `screenshot: ${e.message}`;
        log(`FAILED: screenshot ${opt.screenshot}: ${e.message}`);
    }
    if (failed) {
        const text = await page
            .evaluate(() => document.body.innerText)
            .catch(() => '(page text unavailable)');
        console.log(`--- page text ---\n${text.slice(0, 4000)}\n---`);
    }
}

clearTimeout(overall);
await cleanup();
console.log(failed ? `FAIL: ${failed}` : 'PASS');
process.exit(failed ? 1 : 0);
