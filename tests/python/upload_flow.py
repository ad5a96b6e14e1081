"""HTTP File Upload (XEP-0363) on the service upload.localhost driven by slixmpp's own plugin
xep_0363 (service discovery, slot request, the PUT with the slot's headers through aiohttp),
then the file fetched back over HTTPS and compared byte for byte. Run by
tests/tests/e2e/slixmpp.rs against an in-process Canto whose [http] external_url is its HTTPS
listener and whose [upload] max_file_size is 1 MiB: python3 upload_flow.py PORT CERT_PEM.

Account alice must exist (password alicepw). Prints one line per check and finally
"N passed, M failed"; exits non-zero if any check failed or the flow took longer than OVERALL
seconds.

Section numbers are XEP-0363 1.1's: §3 Discovering Support (the max-file-size form), §4
Requesting a slot (§4.2 errors: file-too-large with the maximum), §5 Upload (the slot's
Authorization header on the PUT)."""

import os
import sys

PORT = int(sys.argv[1])
CERT = sys.argv[2]
# The server's certificate is self-signed. slixmpp's xep_0363 opens its own aiohttp session
# for the PUT with the default verified SSL context, which aiohttp builds when it is imported
# from the OpenSSL default paths: SSL_CERT_FILE set before that makes it trust our certificate
# (and verify it, host name included) instead of switching verification off.
os.environ["SSL_CERT_FILE"] = CERT

import asyncio  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import ssl  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402
import slixmpp  # noqa: E402
from slixmpp.exceptions import IqError  # noqa: E402
from slixmpp.plugins.xep_0363.http_upload import FileTooBig  # noqa: E402

STEP = 20  # seconds for any one step
OVERALL = 90
DOMAIN = "localhost"
SERVICE = f"upload.{DOMAIN}"
MAX = 1024 * 1024
NS = "urn:xmpp:http:upload:0"

passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS {name}")
    else:
        failed += 1
        print(f"FAIL {name}: {detail}")
    sys.stdout.flush()
    return ok


async def within(aw, what):
    try:
        return await asyncio.wait_for(aw, STEP)
    except asyncio.TimeoutError:
        raise RuntimeError(f"timed out: {what}")


async def fetch(url):
    ctx = ssl.create_default_context(cafile=CERT)
    async with aiohttp.ClientSession() as s:
        async with s.get(url, ssl=ctx) as r:
            return r.status, dict(r.headers), await r.read()


async def flow():
    c = slixmpp.ClientXMPP(f"alice@{DOMAIN}", "alicepw")
    c.ssl_context = ssl.create_default_context(cafile=CERT)
    c.enable_plaintext = False
    for p in ("xep_0030", "xep_0004", "xep_0128", "xep_0363"):
        c.register_plugin(p)
    started = asyncio.get_event_loop().create_future()
    c.add_event_handler(
        "session_start", lambda _: started.done() or started.set_result(True)
    )
    c.connect(DOMAIN, PORT)
    try:
        await within(started, "session start")
        up = c["xep_0363"]

        # §3: the service is found through disco on our domain, its form read.
        info = await within(up.find_upload_service(timeout=STEP), "discovery")
        check(
            "service discovered",
            info is not None and str(info["from"]) == SERVICE,
            f"{info}",
        )

        # §4 and §5: slot, PUT (the Authorization header from the slot), the GET URL back.
        data = secrets.token_bytes(300_000)
        import io

        url = await within(
            up.upload_file(
                "canto flow é.bin",
                size=len(data),
                content_type="application/octet-stream",
                input_file=io.BytesIO(data),
                timeout=STEP,
            ),
            "upload",
        )
        check(
            "uploaded",
            url.startswith("https://localhost:") and "/upload/" in url,
            url,
        )
        check("max-file-size read from the form", up.max_file_size == MAX, f"{up.max_file_size}")

        status, headers, body = await within(fetch(url), "download")
        check("downloaded", status == 200, f"{status}")
        check("byte-identical", body == data, f"{len(body)} bytes")
        check(
            "content type as signed",
            headers.get("Content-Type") == "application/octet-stream",
            f"{headers}",
        )
        check(
            "nosniff",
            headers.get("X-Content-Type-Options") == "nosniff",
            f"{headers}",
        )

        # An image with a type guessed by the plugin from the name is inline.
        png = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(100)
        url2 = await within(
            up.upload_file("dot.png", input_file=io.BytesIO(png), timeout=STEP),
            "second upload",
        )
        status, headers, body = await within(fetch(url2), "second download")
        check(
            "image served inline",
            status == 200
            and body == png
            and headers.get("Content-Type") == "image/png"
            and headers.get("Content-Disposition", "").startswith("inline"),
            f"{status} {headers}",
        )

        # Too large: the plugin refuses by the advertised maximum…
        try:
            await up.upload_file(
                "big.bin", size=MAX + 1, input_file=io.BytesIO(b""), timeout=STEP
            )
            check("too large refused by the client", False, "no error")
        except FileTooBig:
            check("too large refused by the client", True)
        # …and the service too, with the maximum (§4.2).
        try:
            await within(
                up.request_slot(SERVICE, "big.bin", MAX + 1, "application/octet-stream", timeout=STEP),
                "slot for a large file",
            )
            check("too large refused by the service", False, "slot given")
        except IqError as e:
            err = e.iq["error"]
            too_large = err.xml.find(f"{{{NS}}}file-too-large/{{{NS}}}max-file-size")
            check(
                "too large refused by the service",
                err["condition"] == "not-acceptable"
                and too_large is not None
                and too_large.text == str(MAX),
                str(e.iq),
            )
    finally:
        c.disconnect(wait=0.5)
        await asyncio.sleep(0.3)


async def run():
    try:
        await asyncio.wait_for(flow(), OVERALL)
    except asyncio.TimeoutError:
        check("overall", False, f"flow took longer than {OVERALL} s")
    except Exception as e:  # a failure of the flow itself still ends with the summary line
        check("flow", False, repr(e))


if os.environ.get("UPLOAD_FLOW_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(message)s")
started = time.monotonic()
asyncio.run(run())
print(f"({time.monotonic() - started:.1f} s)")
print(f"{passed} passed, {failed} failed")
sys.exit(0 if failed == 0 and passed > 0 else 1)
