"""Socket probe run under libipvirt.so by the tests: an ordinary Python
program doing ordinary socket calls. Arguments are a sequence of operations;
each prints one line "OP RESULT", RESULT being "IP PORT" (the local address
the kernel chose, or the peer for accept) or "errno N".

  connect HOST PORT          TCP, AF_INET
  connect6 HOST PORT         TCP, dual-stack AF_INET6 (HOST like ::ffff:127.0.0.1)
  bind6any HOST PORT         AF_INET6 socket bound to [::]:0, then connect
  bindconnect BIND HOST PORT bind to BIND:0 first, then connect
  bind HOST PORT             TCP bind, listen; prints the bound address
  accept                     accept one connection on the last bound socket
  udp HOST PORT              UDP sendto without connect
  udpmsg HOST PORT           UDP sendmsg with an address, without connect
  fork HOST PORT             connect, fork; the child connects too
  sleep SECONDS
"""
import os
import socket
import sys
import time


def addr(sa):
    return "%s %d" % (sa[0].removeprefix("::ffff:"), sa[1])


def out(op, res):
    print(op, res, flush=True)


def attempt(op, fn):
    try:
        out(op, fn())
    except OSError as e:
        out(op, "errno %d" % e.errno)


def tcp(host, port, family=socket.AF_INET, bind=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    if bind is not None:
        s.bind(bind)
    s.connect((host, port))
    KEEP.append(s)
    return addr(s.getsockname())


def udp(host, port, msg):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if msg:
        s.sendmsg([b"probe"], [], 0, (host, port))
    else:
        s.sendto(b"probe", (host, port))
    KEEP.append(s)
    return addr(s.getsockname())


def listen(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(8)
    LISTENERS.append(s)
    return addr(s.getsockname())


def accept():
    LISTENERS[-1].settimeout(30)
    c, peer = LISTENERS[-1].accept()
    KEEP.append(c)
    return addr(peer)


def fork(host, port):
    first = tcp(host, port)
    pid = os.fork()
    if pid == 0:
        try:
            res = tcp(host, port)
        except OSError as e:
            res = "errno %d" % e.errno
        out("child", res)
        os._exit(0)
    os.waitpid(pid, 0)
    return first


KEEP, LISTENERS = [], []
args = sys.argv[1:]
while args:
    op = args.pop(0)
    if op == "connect":
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: tcp(h, p))
    elif op == "connect6":
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: tcp(h, p, socket.AF_INET6))
    elif op == "bind6any":
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: tcp(h, p, socket.AF_INET6, ("::", 0)))
    elif op == "bindconnect":
        b, h, p = args.pop(0), args.pop(0), int(args.pop(0))
        attempt(op, lambda: tcp(h, p, bind=(b, 0)))
    elif op == "bind":
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: listen(h, p))
    elif op == "accept":
        attempt(op, accept)
    elif op in ("udp", "udpmsg"):
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: udp(h, p, op == "udpmsg"))
    elif op == "fork":
        h, p = args.pop(0), int(args.pop(0))
        attempt(op, lambda: fork(h, p))
    elif op == "sleep":
        time.sleep(float(args.pop(0)))
    else:
        sys.exit("probe.py: unknown operation %r" % op)
