package server

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ipvirt/ipvirt/internal/census"
	"github.com/ipvirt/ipvirt/internal/metrics"
)

// Limits of the HTTP server, each with the reason for its value. The port
// is reachable by every local user, so, as on the socket, no one user may
// hold what the others and the scraper need.
const (
	// httpMaxConns caps open HTTP connections: a scraper and a few
	// operators need a handful.
	httpMaxConns = 512
	// httpMaxConnsPerUID is one local uid's share (all remote peers
	// together count as one uid).
	httpMaxConnsPerUID = 16
	// httpRootReserve places beyond httpMaxConns are root's alone.
	httpRootReserve = 16
	// httpHeaderTimeout drops a client that connects and does not send its
	// request headers; a scraper sends them at once.
	httpHeaderTimeout = 5 * time.Second
	// httpRequestTimeout bounds reading a request and writing its reply:
	// replies are reports of a few kilobytes.
	httpRequestTimeout = 10 * time.Second
	// httpIdleTimeout closes a keep-alive connection that sends nothing;
	// a scraper at the usual 15-60 s interval reconnects at no real cost.
	httpIdleTimeout = 30 * time.Second
	// httpMaxHeaderBytes bounds a request's headers: ipvirt's endpoints
	// take no parameters, and a scraper's headers are a few hundred bytes.
	httpMaxHeaderBytes = 8 << 10
	// remoteUID stands for a peer whose uid the kernel cannot tell: a
	// connection from another host.
	remoteUID = math.MaxUint32
)

// NewHTTP returns the HTTP server of /metrics, /v1/sessions, /v1/status and
// /healthz with its limits; serve it on ListenHTTP's listener, which tells
// each request's handler who connected.
func NewHTTP(b Backend, m *metrics.Metrics) *http.Server {
	return &http.Server{
		Handler:           HTTPHandler(b, m),
		ReadHeaderTimeout: httpHeaderTimeout,
		ReadTimeout:       httpRequestTimeout,
		WriteTimeout:      httpRequestTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    httpMaxHeaderBytes,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				return context.WithValue(ctx, peerKey{}, pc.uid)
			}
			return ctx
		},
	}
}

type peerKey struct{}

// peerOf is the uid that opened the request's connection, or remoteUID.
func peerOf(r *http.Request) uint32 {
	if uid, ok := r.Context().Value(peerKey{}).(uint32); ok {
		return uid
	}
	return remoteUID
}

// HTTPHandler serves /metrics, /v1/sessions, /v1/status and /healthz.
// /v1/sessions shows a caller what the socket shows it: an administrator
// every session, any other local user their own, a remote peer nothing.
func HTTPHandler(b Backend, m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		uid := peerOf(r)
		switch {
		case uid == remoteUID:
			http.Error(w, "sessions are shown to local users only (the kernel does not know this peer's uid); /metrics has the totals", http.StatusForbidden)
		case uid == 0 || b.IsAdmin(uid):
			writeJSON(w, http.StatusOK, b.Sessions(nil))
		default:
			writeJSON(w, http.StatusOK, b.Sessions(&uid))
		}
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		st := b.Status()
		switch {
		case st.DuplicateVIP != 0:
			http.Error(w, "duplicate VIPs held: "+strconv.Itoa(st.DuplicateVIP), http.StatusInternalServerError)
		case !st.Healthy:
			http.Error(w, "address source unhealthy: "+st.Health, http.StatusServiceUnavailable)
		case !st.StoreHealthy:
			http.Error(w, "lease store unhealthy: "+st.StoreHealth, http.StatusServiceUnavailable)
		default:
			w.Write([]byte("ok\n"))
		}
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// ListenHTTP wraps a TCP listener: each connection is tagged with the uid
// of the local process that opened it (the kernel's socket diagnostics
// know a loopback peer's owner), and one over its uid's share, or over the
// cap, is closed at once.
func ListenHTTP(ln net.Listener, m *metrics.Metrics, log *slog.Logger) net.Listener {
	return &peerListener{Listener: ln, m: m, log: log,
		slots: slots{limit: httpMaxConns, perUID: httpMaxConnsPerUID, rootReserve: httpRootReserve}}
}

type peerListener struct {
	net.Listener
	m       *metrics.Metrics
	log     *slog.Logger
	slots   slots
	lastLog time.Time      // only Accept's goroutine touches it
	diag    *census.Dumper // nil until needed
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if l.diag != nil && errors.Is(err, net.ErrClosed) {
				l.diag.Close()
				l.diag = nil
			}
			return nil, err
		}
		uid := l.peerUID(c)
		if !l.slots.take(uid) {
			c.Close()
			if l.m != nil {
				l.m.ConnsRefused.WithLabelValues("http").Inc()
			}
			if time.Since(l.lastLog) >= refusedLogEvery {
				l.lastLog = time.Now()
				l.log.Warn("HTTP connection refused: connection cap reached", "uid", uid,
					"per_uid_cap", httpMaxConnsPerUID, "cap", httpMaxConns)
			}
			continue
		}
		return &peerConn{Conn: c, uid: uid, free: func() { l.slots.free(uid) }}, nil
	}
}

// peerUID asks the kernel who owns the other end of c, which on this host
// is a socket of its own; remoteUID when it is not local.
func (l *peerListener) peerUID(c net.Conn) uint32 {
	local, ok1 := c.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return remoteUID
	}
	if l.diag == nil {
		d, err := census.Open()
		if err != nil {
			l.log.Warn("cannot tell HTTP clients apart: every one counts as remote", "err", err)
			return remoteUID
		}
		l.diag = d
	}
	uid, err := l.diag.Owner(remote.AddrPort(), local.AddrPort())
	if err != nil {
		return remoteUID
	}
	return uid
}

// peerConn is a connection holding one of the listener's places, which
// Close gives back once.
type peerConn struct {
	net.Conn
	uid  uint32
	free func()
	once sync.Once
}

// Close may come from the connection's goroutine and from a shutdown at
// once; the place is given back exactly once.
func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
