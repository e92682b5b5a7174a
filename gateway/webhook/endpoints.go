package webhook

import (
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// maxPublishedAddrs bounds the machine addresses a foreman publishes with its target, and
// those read from another's entry.
const maxPublishedAddrs = 64

// MachineAddrs lists this machine's own addresses but loopback and link-local ones (up to
// maxPublishedAddrs), for a foreman whose Ollama is published at a loopback URL to
// publish beside it: another foreman's policy protects that Ollama's port on them
// (EndpointsOf). A machine whose addresses cannot be read publishes none.
func MachineAddrs() []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range addrs {
		pn, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pn.Addr().Unmap().WithZone("")
		// Link-local addresses are refused by default anyway, and many (one per tunnel
		// or bridge interface) would crowd out the LAN's.
		if ip.IsLoopback() || ip.IsUnspecified() || ip.IsMulticast() || ip.IsLinkLocalUnicast() ||
			len(out) == maxPublishedAddrs || slices.Contains(out, ip.String()) {
			continue
		}
		out = append(out, ip.String())
	}
	return out
}

// EndpointsOf is a target's endpoints (host:port) for ProtectedSource: its URL's, and,
// when that host is a loopback or unspecified address or a localhost name, its port on
// each of addrs, the addresses its foreman published for its machine (at most
// maxPublishedAddrs; any that do not parse are skipped). An Ollama that another Mac's
// foreman reaches at 127.0.0.1 listens there, and often on the Mac's LAN addresses too
// (OLLAMA_HOST=0.0.0.0): a webhook to one of those would load a model outside the queue.
func EndpointsOf(rawURL string, addrs []string) ([]string, error) {
	ep, err := EndpointOf(rawURL)
	if err != nil {
		return nil, err
	}
	out := []string{ep}
	if !LocalURL(rawURL) {
		return out, nil
	}
	u, _ := url.Parse(rawURL) // parsed by EndpointOf
	port := strconv.Itoa(int(portOf(u)))
	for i, s := range addrs {
		if i == maxPublishedAddrs {
			break
		}
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, net.JoinHostPort(ip.Unmap().WithZone("").String(), port))
		}
	}
	return out, nil
}

// LocalURL reports whether rawURL's host is a loopback or unspecified address or a
// localhost name: one that means "this machine" wherever it is read.
func LocalURL(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	host := strings.Trim(u.Hostname(), "[]")
	if localhostName(host) {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && (a.IsLoopback() || a.IsUnspecified())
}
