package app

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"time"
)

// pprofHandler serves Go's runtime profiles (net/http/pprof) under /debug/pprof/, for an
// operator whose foreman hangs or grows: `go tool pprof http://127.0.0.1:6060/debug/pprof/heap`,
// or `curl 'http://127.0.0.1:6060/debug/pprof/goroutine?debug=2'` for every goroutine's
// stack. Its listener is loopback only (CheckPprofAddr), and a request must name it by a
// loopback address or localhost (a page whose name was rebound to 127.0.0.1 reads nothing).
// /debug/pprof/cmdline is left out: serve's command line may hold tokens and passwords.
func pprofHandler() http.Handler {
	mux := http.NewServeMux()
	// Index serves the named profiles too (/debug/pprof/heap, goroutine, allocs, block,
	// mutex, threadcreate): only the runtime's own, so cmdline is not among them.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/debug/pprof/cmdline", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not served: the command line may hold credentials", http.StatusNotFound)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			http.Error(w, "host not allowed: name this listener by a loopback address or localhost", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a request's Host names a loopback address or localhost.
func loopbackHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// newPprofServer is the HTTP server of the profiles' listener. A CPU profile or a trace
// takes as long as asked (?seconds=), so writes are not bounded in time.
func newPprofServer() *http.Server {
	return &http.Server{Handler: pprofHandler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
}

// CheckPprofAddr refuses a profiles' listener on other than loopback: profiles and
// goroutine stacks tell what foreman holds and does, and the listener has no token
// (reach a remote foreman's through `ssh -L 6060:127.0.0.1:6060`).
func CheckPprofAddr(c Config) error {
	if c.PprofAddr == "" || LoopbackAddr(c.PprofAddr) {
		return nil
	}
	return fmt.Errorf("FOREMAN_PPROF_ADDR=%q is not a loopback address: the profiles' listener takes no token, "+
		"so it listens on loopback only (e.g. 127.0.0.1:6060; from another machine, through ssh -L 6060:127.0.0.1:6060)", c.PprofAddr)
}
