package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrRefused is the network policy refusing a webhook's address (ADR-0021). A refusal is
// permanent: the delivery log records it as "refused" and the event is not retried.
var ErrRefused = errors.New("webhook: address refused by the network policy")

// RefusedError is ErrRefused for one address, with the reason.
type RefusedError struct {
	Addr   string // the address or host:port refused
	Reason string // e.g. "a loopback address"
	// Openable: FOREMAN_WEBHOOK_ALLOW_NETS could allow the address.
	Openable bool
}

func (e *RefusedError) Error() string {
	msg := fmt.Sprintf("%s is %s: foreman sends no webhooks there", e.Addr, e.Reason)
	if e.Openable {
		msg += " (FOREMAN_WEBHOOK_ALLOW_NETS opens a range)"
	}
	return msg
}

// Is makes errors.Is(err, ErrRefused) true.
func (e *RefusedError) Is(target error) bool { return target == ErrRefused }

// Policy decides which addresses webhooks may reach (ADR-0021). Its zero value is the
// default: loopback, link-local, unspecified, multicast and broadcast addresses and the
// clouds' metadata services are refused, private LAN ranges and public addresses allowed.
//
// The dispatcher checks every connection it opens (DialContext: the resolved addresses,
// so a name may point anywhere), and POST /jobs checks literal addresses and
// localhost-style names at submit (CheckURL), so most mistakes are a 400, not a log entry.
type Policy struct {
	// AllowNets opens ranges the policy would refuse (FOREMAN_WEBHOOK_ALLOW_NETS), e.g.
	// 127.0.0.0/8 for receivers on foreman's own machine.
	AllowNets []netip.Prefix
	// DenyPrivate refuses the private LAN ranges too (10/8, 172.16/12, 192.168/16,
	// fc00::/7), unless AllowNets opens them (FOREMAN_WEBHOOK_DENY_PRIVATE).
	DenyPrivate bool
	// Protected are host:port endpoints no webhook reaches, whatever AllowNets says:
	// foreman's target (FOREMAN_OLLAMA_URL) and its own HTTP address. An endpoint on a
	// loopback or unspecified host also covers its port on this machine's addresses.
	Protected []string
	// LookupNetIP resolves names; default net.DefaultResolver.LookupNetIP.
	LookupNetIP func(ctx context.Context, network, host string) ([]netip.Addr, error)
	// InterfaceAddrs lists this machine's addresses; default net.InterfaceAddrs.
	InterfaceAddrs func() ([]net.Addr, error)
	// ProtectedSource, when set, lists more protected endpoints (host:port), read at each
	// connection: the Ollama targets of the other foremen sharing the NATS, which come
	// and go while foreman runs (ADR-0029). They are refused as Protected's are, names
	// resolved with LookupNetIP, but only at dial time: the submit check reads no list.
	ProtectedSource func(ctx context.Context) []string

	// connect makes the connection to a checked ip:port; nil is dialDirect. Tests
	// replace it to prove a refused address is never connected to.
	connect func(ctx context.Context, network, addr string) (net.Conn, error)
}

// dialDirect makes a policy's connections when its connect is nil. The package's tests
// replace it (TestMain) with a dialer that refuses, and reports, any address off this
// machine, so no test can reach a real host whatever policy it builds.
var dialDirect = (&net.Dialer{}).DialContext

// ParseNets reads a comma-separated list of CIDRs (a bare address is one address).
func ParseNets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (e.g. 127.0.0.0/8, ::1/128)", f)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// category names why the default refuses ip, or "" when it allows it.
func (p *Policy) category(ip netip.Addr) string {
	switch {
	case ip.IsUnspecified() || (ip.Is4() && ip.As4()[0] == 0):
		return "an unspecified address"
	case ip.IsLoopback():
		return "a loopback address"
	case ip.IsLinkLocalUnicast():
		return "a link-local address"
	case metadataAddrs[ip]:
		return "a cloud metadata address"
	case siteLocal.Contains(ip):
		return "a site-local address"
	case ip.IsMulticast():
		return "a multicast address"
	case ip == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return "a broadcast address"
	case p.DenyPrivate && (ip.IsPrivate() || sharedSpace.Contains(ip)):
		return "a private address (FOREMAN_WEBHOOK_DENY_PRIVATE)"
	}
	return ""
}

var (
	// metadataAddrs are the clouds' instance metadata services that are not at the
	// link-local 169.254.169.254 (refused as link-local): AWS's IPv6 endpoint and Google
	// Cloud's (both unique-local, which the private ranges hold), Alibaba Cloud's (in the
	// shared space 100.64.0.0/10) and Azure's WireServer (a public address).
	metadataAddrs = map[netip.Addr]bool{
		netip.MustParseAddr("fd00:ec2::254"):   true,
		netip.MustParseAddr("fd20:ce::254"):    true,
		netip.MustParseAddr("100.100.100.200"): true,
		netip.MustParseAddr("168.63.129.16"):   true,
	}
	// siteLocal is fec0::/10, deprecated (RFC 3879) but still routed on some networks.
	siteLocal = netip.MustParsePrefix("fec0::/10")
	// sharedSpace is 100.64.0.0/10 (RFC 6598): carrier-grade NAT, and Tailscale's tailnet.
	sharedSpace = netip.MustParsePrefix("100.64.0.0/10")
	// IPv6 ranges that carry an IPv4 address, which a gateway or the host stack reaches.
	nat64      = netip.MustParsePrefix("64:ff9b::/96")   // RFC 6052 well-known prefix
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48") // RFC 8215 local-use prefix
	v4Compat   = netip.MustParsePrefix("::/96")          // IPv4-compatible (deprecated)
	sixToFour  = netip.MustParsePrefix("2002::/16")      // 6to4 (RFC 3056)
	// v4Translated is ::ffff:0:a.b.c.d (RFC 2765, SIIT); not the IPv4-mapped
	// ::ffff:a.b.c.d, which is unmapped before the check.
	v4Translated = netip.MustParsePrefix("::ffff:0:0:0/96")
)

// embeddedV4 returns the IPv4 addresses an IPv6 address carries: NAT64 (the well-known
// prefix, and the local-use one, read as a /48 and as a /96 prefix since its length is
// the operator's choice), IPv4-compatible, IPv4-translated and 6to4 addresses.
// IPv4-mapped ones are unmapped before they get here.
func embeddedV4(ip netip.Addr) []netip.Addr {
	if !ip.Is6() {
		return nil
	}
	b := ip.As16()
	last := netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
	switch {
	case nat64.Contains(ip):
		return []netip.Addr{last}
	case nat64Local.Contains(ip):
		// RFC 6052 §2.2: a /48 prefix puts the address in bytes 6-7 and 9-10 (byte 8 is 0).
		// The reading that finds all zeros (the other one's unused bits) is not one.
		var out []netip.Addr
		for _, a := range []netip.Addr{netip.AddrFrom4([4]byte{b[6], b[7], b[9], b[10]}), last} {
			if !a.IsUnspecified() {
				out = append(out, a)
			}
		}
		return out
	case v4Compat.Contains(ip), v4Translated.Contains(ip):
		return []netip.Addr{last}
	case sixToFour.Contains(ip):
		return []netip.Addr{netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})}
	}
	return nil
}

func (p *Policy) allowed(ip netip.Addr) bool {
	for _, n := range p.AllowNets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}

// CheckAddr reports whether a webhook may connect to ip:port: nil, or a *RefusedError.
// Protected endpoints given by name are resolved with LookupNetIP.
func (p *Policy) CheckAddr(ctx context.Context, ip netip.Addr, port uint16) error {
	return p.checkAddr(ctx, ip, port, true)
}

// checkAddr is CheckAddr; resolve false compares protected endpoints given by name by
// name only (no DNS at submit).
func (p *Policy) checkAddr(ctx context.Context, ip netip.Addr, port uint16, resolve bool) error {
	ip = ip.Unmap().WithZone("")
	ap := netip.AddrPortFrom(ip, port).String()
	if what := p.protected(ctx, ip, port, resolve); what != "" {
		return &RefusedError{Addr: ap, Reason: what}
	}
	if p.allowed(ip) {
		return nil
	}
	if c := p.category(ip); c != "" {
		return &RefusedError{Addr: ip.String(), Reason: c, Openable: true}
	}
	// An address carrying an IPv4 one leads there: it is refused as that one would be.
	for _, v4 := range embeddedV4(ip) {
		var re *RefusedError
		if err := p.checkAddr(ctx, v4, port, resolve); errors.As(err, &re) {
			return &RefusedError{Addr: ip.String(), Reason: "an address embedding " + v4.String() + ", " + re.Reason, Openable: re.Openable}
		}
	}
	return nil
}

// ownEndpoint and sharedTarget are the refusal reasons of a protected endpoint (which
// one is not said) and of an endpoint from ProtectedSource.
const (
	ownEndpoint  = "foreman's own endpoint (its Ollama target or its HTTP address)"
	sharedTarget = "the Ollama target of another foreman on the same NATS"
)

// protected reports why ip:port is a protected endpoint, or "". With resolve (at dial
// time) it also checks the endpoints ProtectedSource lists.
func (p *Policy) protected(ctx context.Context, ip netip.Addr, port uint16, resolve bool) string {
	if p.isEndpoint(ctx, p.Protected, ip, port, resolve) {
		return ownEndpoint
	}
	if resolve && p.ProtectedSource != nil && p.isEndpoint(ctx, p.ProtectedSource(ctx), ip, port, resolve) {
		return sharedTarget
	}
	return ""
}

// isEndpoint reports whether ip:port is one of endpoints (host:port). An endpoint on a
// loopback or unspecified host also covers its port on this machine's addresses.
func (p *Policy) isEndpoint(ctx context.Context, endpoints []string, ip netip.Addr, port uint16, resolve bool) bool {
	var own []netip.Addr // this machine's addresses, read once when needed
	ownRead := false
	for _, hp := range endpoints {
		host, pport, ok := splitHostPort(hp)
		if !ok || pport != port {
			continue
		}
		addrs := p.literalOrLocal(host)
		if addrs == nil && resolve {
			addrs, _ = p.lookup(ctx, "ip", host) // unresolvable: compared by name at submit only
		}
		local := false
		for _, a := range addrs {
			a = a.Unmap().WithZone("")
			if a == ip {
				return true
			}
			local = local || a.IsLoopback() || a.IsUnspecified()
		}
		if !local {
			continue
		}
		if ip.IsLoopback() || ip.IsUnspecified() {
			return true
		}
		if !ownRead {
			own, ownRead = p.ownAddrs(), true
		}
		for _, a := range own {
			if a == ip {
				return true
			}
		}
	}
	return false
}

// CheckURL is the submit-time check of a webhook URL (http or https, already parsed):
// literal addresses (also the numeric spellings resolvers accept, see inetAton) and
// localhost-style names are checked as the dialer would, and a protected endpoint is
// refused by name. Other names are left to the dial-time check: no DNS is done here.
func (p *Policy) CheckURL(u *url.URL) error {
	host := strings.TrimSuffix(strings.ToLower(u.Hostname()), ".")
	port := portOf(u)
	for _, hp := range p.Protected {
		h, pp, ok := splitHostPort(hp)
		if ok && pp == port && strings.EqualFold(strings.TrimSuffix(h, "."), host) {
			return &RefusedError{Addr: net.JoinHostPort(host, strconv.Itoa(int(port))), Reason: ownEndpoint}
		}
	}
	addrs := p.literalOrLocal(host)
	numeric := false
	if addrs == nil {
		a, ok := inetAton(host)
		if !ok {
			return nil
		}
		addrs, numeric = []netip.Addr{a}, true
	}
	// Refused when every address is, as the dialer would be.
	var first error
	for _, a := range addrs {
		err := p.checkAddr(context.Background(), a, port, false)
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
	}
	var re *RefusedError
	if (numeric || localhostName(host)) && errors.As(first, &re) {
		re.Addr = host + " (" + re.Addr + ")"
	}
	return first
}

// literalOrLocal returns the address of a literal host, the loopback addresses of a
// localhost-style name, or nil for any other name.
func (p *Policy) literalOrLocal(host string) []netip.Addr {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}
	}
	if localhostName(host) {
		return []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()}
	}
	return nil
}

// inetAton reads host as the C library's inet_aton does, which getaddrinfo and so most
// resolvers apply before any DNS: one to four parts separated by dots, each decimal,
// octal (a leading 0) or hex (0x); the last part fills the bytes the others leave, so
// "2130706433", "0177.0.0.1", "0x7f.1" and "127.1" are all 127.0.0.1. Go's URL parser
// and netip see names there.
func inetAton(host string) (netip.Addr, bool) {
	parts := strings.Split(host, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var n uint64
	for i, part := range parts {
		v, ok := atonPart(part)
		if !ok {
			return netip.Addr{}, false
		}
		if i < len(parts)-1 {
			if v > 255 {
				return netip.Addr{}, false
			}
			n |= v << (24 - 8*i)
			continue
		}
		if v >= 1<<(8*(5-len(parts))) {
			return netip.Addr{}, false
		}
		n |= v
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

// atonPart reads one part of an inet_aton address.
func atonPart(s string) (uint64, bool) {
	base := 10
	switch {
	case len(s) >= 2 && (s[:2] == "0x" || s[:2] == "0X"):
		base, s = 16, s[2:]
		if s == "" {
			return 0, true // "0x" alone reads as 0
		}
	case len(s) >= 2 && s[0] == '0':
		base, s = 8, s[1:]
	}
	v, err := strconv.ParseUint(s, base, 32) // an explicit base: no sign, prefix or "_"
	return v, err == nil
}

// localhostName: "localhost" and names under ".localhost" resolve to loopback (RFC 6761).
func localhostName(host string) bool {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	return host == "localhost" || strings.HasSuffix(host, ".localhost")
}

// dialTimeout bounds one dial, its lookup and every address it tries, as the dialer of
// http.DefaultTransport (which Client's transport is cloned from) bounds it: net/http
// dials with a context cut from the request's deadline (the dial may outlive the
// request, for a later one to use), so without it an address that drops packets held
// the dial until the system gave up, minutes after the attempt had ended and freed its
// receiver's slot for the next, and a name with many such addresses held it for each.
const dialTimeout = 30 * time.Second

// minAddrDial is the least time an address gets of what is left of a dial, as net.Dialer
// gives it: with many addresses the last ones may get none.
const minAddrDial = 2 * time.Second

// DialContext connects to addr ("host:port") through the policy: the host is resolved,
// every refused address is skipped, and the rest are tried in order, within dialTimeout,
// each given an equal share of what is left (at least minAddrDial) so that one that drops
// packets leaves time for the next, as net.Dialer does. With nothing left it returns the
// first refusal (errors.Is ErrRefused) before any connection is made.
func (p *Policy) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, ok := splitHostPort(addr)
	if !ok {
		return nil, fmt.Errorf("webhook dial: bad address %q", addr)
	}
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	ips := p.literalOrLocal(host)
	if ips == nil {
		ipNet := "ip"
		switch network {
		case "tcp4":
			ipNet = "ip4"
		case "tcp6":
			ipNet = "ip6"
		}
		var err error
		if ips, err = p.lookup(ctx, ipNet, host); err != nil {
			return nil, err
		}
	}
	var (
		refusal error
		errs    []error
	)
	connect := p.connect
	if connect == nil {
		connect = dialDirect
	}
	var allowed []netip.Addr
	for _, ip := range ips {
		if err := p.CheckAddr(ctx, ip, port); err != nil {
			if refusal == nil {
				refusal = err
			}
			continue
		}
		allowed = append(allowed, ip)
	}
	for i, ip := range allowed {
		actx, cancelAddr := addrContext(ctx, len(allowed)-i)
		c, err := connect(actx, network, netip.AddrPortFrom(ip.Unmap(), port).String())
		cancelAddr() // a connection made outlives the context it was made with
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if refusal != nil {
		return nil, refusal
	}
	return nil, fmt.Errorf("webhook dial: %s has no address", host)
}

// addrContext is ctx for one of the remaining addresses of a dial: an equal share of the
// time left, at least minAddrDial (net.Dialer's partial deadline).
func addrContext(ctx context.Context, remaining int) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok || remaining <= 1 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, max(time.Until(dl)/time.Duration(remaining), minAddrDial))
}

// maxResponseHeaderBytes bounds the headers a receiver may answer with: a webhook reads
// only the status and Retry-After, and Go's default (10 MiB) let each attempt in flight
// to a hostile receiver hold that much.
const maxResponseHeaderBytes = 16 << 10

// Client is an HTTP client whose every connection goes through the policy. It follows
// no redirects (Standard Webhooks counts a 3xx as a failure, and following one would
// send the signed event somewhere the job's owner did not name), uses no proxy from the
// environment (the policy must see the receiver's own address) and reads at most 16 KiB
// of response headers (a larger answer is a failed attempt).
func (p *Policy) Client() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.Proxy = nil
	t.DialContext = p.DialContext
	t.MaxResponseHeaderBytes = maxResponseHeaderBytes
	return &http.Client{
		Transport:     t,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (p *Policy) lookup(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if p.LookupNetIP != nil {
		return p.LookupNetIP(ctx, network, host)
	}
	return net.DefaultResolver.LookupNetIP(ctx, network, host)
}

func (p *Policy) ownAddrs() []netip.Addr {
	list := net.InterfaceAddrs
	if p.InterfaceAddrs != nil {
		list = p.InterfaceAddrs
	}
	addrs, err := list()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if pn, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, pn.Addr().Unmap().WithZone(""))
		}
	}
	return out
}

// splitHostPort splits "host:port" with a numeric port.
func splitHostPort(hp string) (string, uint16, bool) {
	host, ps, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, false
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return "", 0, false
	}
	return host, uint16(port), true
}

// portOf is a URL's port, or its scheme's default.
func portOf(u *url.URL) uint16 {
	if ps := u.Port(); ps != "" {
		if n, err := strconv.ParseUint(ps, 10, 16); err == nil {
			return uint16(n)
		}
	}
	if u.Scheme == "https" {
		return 443
	}
	return 80
}

// EndpointOf is the host:port of an http(s) URL (the port defaulted by scheme), for
// Policy.Protected.
func EndpointOf(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Hostname() == "" {
		return "", fmt.Errorf("%q is not an absolute URL", rawURL)
	}
	return net.JoinHostPort(u.Hostname(), strconv.Itoa(int(portOf(u)))), nil
}
