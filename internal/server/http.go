package server

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ipvirt/ipvirt/internal/metrics"
)

// HTTPHandler serves /metrics, /v1/sessions, /v1/status and /healthz. It
// listens on loopback by default: /v1/sessions shows every session, which
// the Unix socket shows to administrators only.
func HTTPHandler(b Backend, m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("GET /v1/sessions", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, b.Sessions(nil))
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
