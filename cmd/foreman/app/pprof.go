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
// loopback address or localhost (a page whose name was rebound to 127.0.0.1 reads nothing)
// and come from no web page of another site (fromOtherSite: a page runs a profile it
// cannot read).
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
		if fromOtherSite(r) {
			http.Error(w, "forbidden: a request a web page of another site made (open the profiles yourself, or use go tool pprof or curl)", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// fromOtherSite reports whether r was made by a web page of another site, which a
// browser on this machine sends to 127.0.0.1 with a loopback Host: an <img> or a
// no-cors fetch needs no CORS permission and carries no Origin, and although the page
// reads nothing of the answer, the profile runs: /debug/pprof/trace?seconds=86400 traces
// foreman for a day (the runtime's tracing slows every goroutine) and
// /debug/pprof/profile?seconds=86400 holds the one CPU profile there may be, so the
// operator's own fails with "cpu profiling already in use". Browsers say where a request
// comes from in Sec-Fetch-Site: "none" for an address the user typed, "same-origin" for a
// link of the pprof index; go tool pprof and curl send no such header. A CORS request
// from another origin (its Origin not this listener's) is refused too, for a browser
// without Sec-Fetch-Site.
func fromOtherSite(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "none", "same-origin":
	default:
		return true
	}
	origin := r.Header.Get("Origin")
	return origin != "" && origin != "http://"+r.Host
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
