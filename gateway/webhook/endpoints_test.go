package webhook

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

// An Ollama published at a loopback URL is protected on the addresses its foreman
// published for its machine too; one published at another address only there.
func TestEndpointsOf(t *testing.T) {
	t.Parallel()
	addrs := []string{"192.168.1.20", "fe80::1%en0", "not an address", "::ffff:10.0.0.7"}
	for _, c := range []struct {
		url  string
		want []string
	}{
		{"http://127.0.0.1:11434", []string{"127.0.0.1:11434", "192.168.1.20:11434", "[fe80::1]:11434", "10.0.0.7:11434"}},
		{"http://localhost", []string{"localhost:80", "192.168.1.20:80", "[fe80::1]:80", "10.0.0.7:80"}},
		{"http://[::]:11434", []string{"[::]:11434", "192.168.1.20:11434", "[fe80::1]:11434", "10.0.0.7:11434"}},
		{"http://mac-b.lan:11434", []string{"mac-b.lan:11434"}},
		{"http://192.168.1.20:11434", []string{"192.168.1.20:11434"}},
	} {
		got, err := EndpointsOf(c.url, addrs)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("EndpointsOf(%s) = %v, %v; want %v", c.url, got, err, c.want)
		}
	}
	for _, bad := range []string{"localhost:11434", "/api", "http://"} { // no host to protect
		if got, err := EndpointsOf(bad, addrs); err == nil {
			t.Errorf("EndpointsOf(%q) = %v, want an error", bad, got)
		}
	}
	many := make([]string, 2*maxPublishedAddrs)
	for i := range many {
		many[i] = "10.0.0.1"
	}
	if got, _ := EndpointsOf("http://127.0.0.1:11434", many); len(got) != 1+maxPublishedAddrs {
		t.Errorf("%d endpoints from %d published addresses, want at most %d", len(got), len(many), 1+maxPublishedAddrs)
	}
}

// Another foreman's Ollama published at 127.0.0.1:11434 is refused at its Mac's LAN
// address, which it listens on as well (OLLAMA_HOST=0.0.0.0): this foreman's own
// machine's addresses are not that Mac's. The connect seam dials nothing.
func TestPolicyRefusesAnotherForemansLoopbackTargetAtItsAddress(t *testing.T) {
	t.Parallel()
	p := Policy{
		LookupNetIP: names(map[string][]string{"mac-b.lan": {"192.168.1.20"}}),
		ProtectedSource: func(context.Context) []string {
			eps, _ := EndpointsOf("http://127.0.0.1:11434", []string{"192.168.1.20"})
			return eps
		},
	}
	p.connect = noConnect(t, "another foreman's loopback target at its address")
	for _, addr := range []string{"192.168.1.20:11434", "mac-b.lan:11434"} {
		if _, err := p.DialContext(context.Background(), "tcp", addr); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "another foreman") {
			t.Errorf("dial %s: %v, want a refusal", addr, err)
		}
	}
}
