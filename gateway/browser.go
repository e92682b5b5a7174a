package gateway

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"
)

// The browser policy keeps web pages from driving foreman, as Ollama 0.17 keeps them
// from driving Ollama (server/routes.go: gin-contrib/cors with envconfig.AllowedOrigins,
// then allowedHostsMiddleware). See ADR-0023.

// defaultOrigins are the origins Ollama allows whatever OLLAMA_ORIGINS says
// (envconfig.AllowedOrigins); FOREMAN_ORIGINS adds to them.
func defaultOrigins() []string {
	var origins []string
	for _, h := range []string{"localhost", "127.0.0.1", "0.0.0.0"} {
		origins = append(origins,
			"http://"+h,
			"https://"+h,
			"http://"+net.JoinHostPort(h, "*"),
			"https://"+net.JoinHostPort(h, "*"),
		)
	}
	return append(origins, "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
}

// ParseOrigins splits a comma-separated FOREMAN_ORIGINS value. An entry is "*" (every
// origin) or scheme://host[:port] with at most one "*" wildcard, as OLLAMA_ORIGINS.
func ParseOrigins(list string) ([]string, error) {
	var out []string
	for _, o := range strings.Split(list, ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		if err := validOrigin(o); err != nil {
			return nil, fmt.Errorf("%q: %w", o, err)
		}
		out = append(out, o)
	}
	return out, nil
}

func validOrigin(o string) error {
	if o == "*" {
		return nil
	}
	if strings.Count(o, "*") > 1 {
		return errors.New("only one * is allowed")
	}
	if !strings.Contains(o, "://") && !strings.HasPrefix(o, "*") {
		return errors.New("not an origin (scheme://host[:port])")
	}
	return nil
}

// originPolicy decides which Origin headers may use foreman, matching like gin-contrib/cors
// with AllowWildcard: an exact entry, or one "*" standing for any run of characters.
type originPolicy struct {
	all   bool
	exact map[string]bool
	wild  [][2]string // prefix, suffix
}

func newOriginPolicy(extra []string) (*originPolicy, error) {
	p := &originPolicy{exact: map[string]bool{}}
	for _, o := range append(append([]string(nil), extra...), defaultOrigins()...) {
		o = strings.ToLower(strings.TrimSpace(o))
		if err := validOrigin(o); err != nil {
			return nil, fmt.Errorf("gateway: origin %q: %w", o, err)
		}
		switch i := strings.IndexByte(o, '*'); {
		case o == "*":
			p.all = true
		case i < 0:
			p.exact[o] = true
		default:
			p.wild = append(p.wild, [2]string{o[:i], o[i+1:]})
		}
	}
	return p, nil
}

func (p *originPolicy) allows(origin string) bool {
	origin = strings.ToLower(origin)
	if p.all || p.exact[origin] {
		return true
	}
	for _, w := range p.wild {
		if len(origin) >= len(w[0])+len(w[1]) && strings.HasPrefix(origin, w[0]) && strings.HasSuffix(origin, w[1]) {
			return true
		}
	}
	return false
}

// CORS answers, as Ollama's cors.Config (DefaultConfig plus its header list) with
// foreman's own request headers added.
var (
	corsMethods = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
	corsHeaders = []string{
		"Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
		"Origin", "Content-Length",
		// OpenAI SDKs
		"OpenAI-Beta", "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval",
		"X-Stainless-Helper-Method", "X-Stainless-Lang", "X-Stainless-Os", "X-Stainless-Package-Version",
		"X-Stainless-Poll-Helper", "X-Stainless-Retry-Count", "X-Stainless-Runtime",
		"X-Stainless-Runtime-Version", "X-Stainless-Timeout",
		// Anthropic SDKs (/v1/messages; X-Api-Key is also foreman's token)
		"X-Api-Key", "Anthropic-Version", "Anthropic-Beta", "Anthropic-Dangerous-Direct-Browser-Access",
		// foreman: an idempotent submit, an artifact read again or in part (X-Foreman-*
		// headers are added as asked for, allowHeaders)
		"Idempotency-Key", "If-None-Match", "If-Range", "Range",
	}
	// corsExposed lets a page read foreman's own answer headers (Ollama exposes none).
	corsExposed = "X-Foreman-Job-Id,Retry-After,Location"
	corsMaxAge  = strconv.Itoa(int((12 * time.Hour).Seconds()))
)

// refusalLogEvery is how often a browser-policy refusal is logged at most.
const refusalLogEvery = 10 * time.Second

// browserPolicy refuses what a web page must not do: reach a loopback foreman under a
// foreign host name (DNS rebinding), or call it from an origin not in the list. It
// answers CORS preflights itself and adds CORS headers for allowed origins. It runs
// before authenticate: a preflight carries no token.
func (s *Server) browserPolicy(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r.Host) {
			s.jobMetrics.refused.WithLabelValues("host_not_allowed").Inc()
			s.hostRefusals.Do(func() {
				s.log.Warn("request refused: host not allowed on a loopback listener (the next in 10s are counted in foreman_requests_refused_total only)", "host", r.Host, "path", r.URL.Path)
			})
			s.writeError(w, r, refuse(ErrForbidden, fmt.Sprintf("forbidden: host %q is not allowed", clipInput(r.Host))))
			return
		}
		origin := r.Header.Get("Origin")
		if origin == "" || origin == "http://"+r.Host || origin == "https://"+r.Host {
			// Not a cross-origin request (gin-contrib/cors lets same-origin through).
			next.ServeHTTP(w, r)
			return
		}
		if !s.origins.allows(origin) {
			s.jobMetrics.refused.WithLabelValues("origin_not_allowed").Inc()
			s.originRefusals.Do(func() {
				s.log.Warn("request refused: origin not allowed (the next in 10s are counted in foreman_requests_refused_total only)", "origin", origin, "path", r.URL.Path)
			})
			s.writeError(w, r, refuse(ErrForbidden, fmt.Sprintf("forbidden: origin %q is not allowed (FOREMAN_ORIGINS)", clipInput(origin))))
			return
		}
		h := w.Header()
		allowOrigin := origin
		if s.origins.all {
			allowOrigin = "*"
		}
		h.Set("Access-Control-Allow-Origin", allowOrigin)
		if r.Method == http.MethodOptions {
			h.Set("Access-Control-Allow-Methods", corsMethods)
			h.Set("Access-Control-Allow-Headers", allowHeaders(r.Header.Get("Access-Control-Request-Headers")))
			h.Set("Access-Control-Max-Age", corsMaxAge)
			h.Add("Vary", "Origin")
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Expose-Headers", corsExposed)
		next.ServeHTTP(w, r)
	})
}

// allowHeaders is the preflight's Access-Control-Allow-Headers: the fixed list plus the
// X-Foreman-* headers the page asks for.
func allowHeaders(requested string) string {
	out := append([]string(nil), corsHeaders...)
	for _, h := range strings.Split(requested, ",") {
		h = http.CanonicalHeaderKey(strings.TrimSpace(h))
		if strings.HasPrefix(h, "X-Foreman-") {
			out = append(out, h)
		}
	}
	return strings.Join(out, ",")
}

// hostPolicy is Ollama's allowedHostsMiddleware: on a loopback listener the Host header
// must name this machine, so a page whose name was rebound to 127.0.0.1 cannot read
// answers. A listener on another address is reachable under any name anyway, and is
// guarded by the token.
type hostPolicy struct {
	check    bool
	hostname string
	localIP  func(netip.Addr) bool
}

func newHostPolicy(listenAddr string) *hostPolicy {
	p := &hostPolicy{localIP: isLocalIP}
	if listenAddr == "" {
		return p
	}
	p.check = true
	if ap, err := netip.ParseAddrPort(listenAddr); err == nil && !ap.Addr().Unmap().IsLoopback() {
		p.check = false
	}
	if h, err := os.Hostname(); err == nil {
		p.hostname = strings.ToLower(h)
	}
	return p
}

func (s *Server) hostAllowed(hostport string) bool {
	p := s.hosts
	if !p.check {
		return true
	}
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		return ip.IsLoopback() || ip.IsPrivate() || ip.IsUnspecified() || p.localIP(ip)
	}
	host = strings.ToLower(host)
	if host == "" || host == "localhost" || (p.hostname != "" && host == p.hostname) {
		return true
	}
	for _, tld := range []string{".localhost", ".local", ".internal"} {
		if strings.HasSuffix(host, tld) {
			return true
		}
	}
	return false
}

// isLocalIP reports whether ip belongs to one of this machine's interfaces.
func isLocalIP(ip netip.Addr) bool {
	ifaces, err := net.Interfaces()
	if err != nil {
		return false
	}
	for _, iface := range ifaces {
		addrs, err := iface.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if prefix, err := netip.ParsePrefix(a.String()); err == nil && prefix.Addr().Unmap() == ip {
				return true
			}
		}
	}
	return false
}
