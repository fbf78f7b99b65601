"""Send messages with python-hl7's asyncio MLLP client: the independent sender for interop tests.

Usage: hl7_client.py --port P [--tls-ca CA --tls-cert C --tls-key K --server-name N] FILE...
Each FILE holds one message (CR-separated segments). Prints "ACK <MSA-1> <MSA-2>" per message.
Exit status 2 when the TLS handshake or connection fails (message on stderr).
"""
import argparse
import asyncio
import ssl
import sys

import hl7
import hl7.mllp


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--server-name", default="localhost")
    p.add_argument("files", nargs="+")
    return p.parse_args()


async def main():
    args = parse_args()
    ctx = None
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            ctx.load_cert_chain(args.tls_cert, args.tls_key)
    kwargs = {"ssl": ctx, "server_hostname": args.server_name} if ctx else {}
    try:
        reader, writer = await hl7.mllp.open_hl7_connection(
            args.host, args.port, encoding="utf-8", limit=16 * 1024 * 1024, **kwargs
        )
        for name in args.files:
            with open(name, encoding="utf-8-sig") as f:
                text = f.read().replace("\r\n", "\r").replace("\n", "\r").strip("\r")
            writer.writemessage(hl7.parse(text))
            await writer.drain()
            ack = await asyncio.wait_for(reader.readmessage(), 10)
            msa = ack.segment("MSA")
            print(f"ACK {msa[1]} {msa[2]}", flush=True)
        writer.close()
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, OSError) as e:
        print(f"FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    asyncio.run(main())
