"""An MLLP receiver built on python-hl7's asyncio server: the independent peer for interop tests.

Prints "READY <port>" once listening, then one line "RECEIVED <MSH-10> <MSH-9>" per message,
and answers each with python-hl7's own ACK (Message.create_ack). With --tls-cert/--tls-key it
serves TLS through Python's ssl module; with --client-ca it requires client certificates.
"""
import argparse
import asyncio
import ssl
import sys

import hl7
import hl7.mllp


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ack", default="AA")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--client-ca")
    p.add_argument("--quiet", action="store_true", help="no line per message (benchmarks)")
    return p.parse_args()


async def main():
    args = parse_args()

    async def on_client(reader, writer):
        try:
            while not writer.is_closing():
                msg = await reader.readmessage()
                control_id = str(msg.segment("MSH")[10])
                if not args.quiet:
                    print(f"RECEIVED {control_id} {msg.segment('MSH')[9]}", flush=True)
                writer.writemessage(msg.create_ack(ack_code=args.ack))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
    server = await hl7.mllp.start_hl7_server(
        on_client, args.host, args.port, encoding="utf-8", limit=16 * 1024 * 1024, ssl=ctx
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
