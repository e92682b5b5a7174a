package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// No test of this package connects off this machine. Every connection a Policy makes
// (DialContext, so also Policy.Client and every dispatcher) goes to its connect seam or,
// when a test leaves that nil, to dialDirect, which TestMain swaps for onlyLoopback: a
// non-loopback address is refused before any packet is sent, and the run fails.
// Addresses such as 169.254.169.254 or 10.x below are the policy's input (resolver
// answers, literal URLs); they are checked, never dialled.

// offMachine records the non-loopback addresses a test of this package tried to reach.
var offMachine struct {
	sync.Mutex
	addrs []string
}

func TestMain(m *testing.M) {
	dialDirect = onlyLoopback(func(addr string) {
		offMachine.Lock()
		defer offMachine.Unlock()
		offMachine.addrs = append(offMachine.addrs, addr)
	})
	code := m.Run()
	if len(offMachine.addrs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: tests tried to connect off this machine: %v\n", offMachine.addrs)
		code = 1
	}
	os.Exit(code)
}

// errOffMachine is onlyLoopback refusing an address.
var errOffMachine = errors.New("test dialer: not a loopback address, no connection made")

// onlyLoopback is a connect function that dials loopback ip:port addresses only; for any
// other address it calls report and fails without touching the network.
func onlyLoopback(report func(addr string)) func(context.Context, string, string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().Unmap().IsLoopback() {
			report(addr)
			return nil, fmt.Errorf("%s: %w", addr, errOffMachine)
		}
		return d.DialContext(ctx, network, addr)
	}
}

// noConnect is a connect function for tests in which the policy must refuse every
// address: any call fails the test, and none reaches the network.
func noConnect(t *testing.T, what string) func(context.Context, string, string) (net.Conn, error) {
	return func(_ context.Context, _, addr string) (net.Conn, error) {
		t.Errorf("%s: connected to %s", what, addr)
		return nil, errors.New("no connection in this test")
	}
}

// TestOnlyLoopbackGuard: the dialer the package's tests use refuses addresses off this
// machine (documentation ranges here) before any connection, and still reaches loopback.
func TestOnlyLoopbackGuard(t *testing.T) {
	t.Parallel()
	var reported []string
	dial := onlyLoopback(func(addr string) { reported = append(reported, addr) })
	for _, addr := range []string{"192.0.2.1:80", "[2001:db8::1]:443", "[::ffff:198.51.100.7]:80", "hooks.invalid:80"} {
		if c, err := dial(context.Background(), "tcp", addr); !errors.Is(err, errOffMachine) {
			if c != nil {
				c.Close()
			}
			t.Errorf("dial %s: %v, want errOffMachine", addr, err)
		}
	}
	if len(reported) != 4 {
		t.Errorf("reported %v, want all four addresses", reported)
	}
	rcv := newReceiver(t, nil)
	c, err := dial(context.Background(), "tcp", strings.TrimPrefix(rcv.URL, "http://"))
	if err != nil {
		t.Fatalf("dial the loopback receiver: %v", err)
	}
	c.Close()
	// A policy left with no connect of its own dials through the guard.
	p := Policy{AllowNets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}
	if _, err := p.DialContext(context.Background(), "tcp", "192.0.2.1:80"); !errors.Is(err, errOffMachine) {
		t.Errorf("policy dial of 192.0.2.1: %v, want the test dialer's refusal", err)
	}
	offMachine.Lock()
	defer offMachine.Unlock()
	for i, a := range offMachine.addrs {
		if a == "192.0.2.1:80" { // this test's own attempt, not a leak
			offMachine.addrs = append(offMachine.addrs[:i], offMachine.addrs[i+1:]...)
			break
		}
	}
}

// names is a resolver seam: test names map to fixed addresses, nothing else resolves.
func names(m map[string][]string) func(context.Context, string, string) ([]netip.Addr, error) {
	return func(_ context.Context, _, host string) ([]netip.Addr, error) {
		var out []netip.Addr
		for _, a := range m[strings.ToLower(host)] {
			out = append(out, netip.MustParseAddr(a))
		}
		if len(out) == 0 {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return out, nil
	}
}

// TestPolicyDialRefusesBeforeConnecting: names resolving to refused addresses are refused
// by the dialer itself, so no connection is attempted (noConnect fails the test if one
// is). The addresses are the resolver seam's answers, the policy's input: never dialled.
func TestPolicyDialRefusesBeforeConnecting(t *testing.T) {
	t.Parallel()
	lookup := names(map[string][]string{
		"metadata.test": {"169.254.169.254"},
		"lan.test":      {"10.20.30.40"},
		"v6.test":       {"::1"},
		"mapped.test":   {"::ffff:127.0.0.1"},
		"zero.test":     {"0.0.0.0"},
		"mcast.test":    {"ff02::1"},
	})
	cases := []struct {
		policy Policy
		addr   string
	}{
		{Policy{LookupNetIP: lookup}, "metadata.test:80"},
		{Policy{LookupNetIP: lookup}, "v6.test:443"},
		{Policy{LookupNetIP: lookup}, "mapped.test:11434"},
		{Policy{LookupNetIP: lookup}, "zero.test:8080"},
		{Policy{LookupNetIP: lookup}, "mcast.test:80"},
		{Policy{LookupNetIP: lookup}, "127.0.0.1:11434"},
		{Policy{LookupNetIP: lookup}, "localhost:11434"},
		{Policy{LookupNetIP: lookup, DenyPrivate: true}, "lan.test:80"},
		// Opened loopback, but the target's own port stays closed, on any loopback
		// address and on this machine's own addresses.
		{Policy{LookupNetIP: lookup, AllowNets: loopbackNets, Protected: []string{"127.0.0.1:11434"}}, "v6.test:11434"},
		{Policy{LookupNetIP: lookup, AllowNets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Protected: []string{"localhost:11434"},
			InterfaceAddrs: func() ([]net.Addr, error) {
				return []net.Addr{&net.IPNet{IP: net.ParseIP("10.20.30.40"), Mask: net.CIDRMask(24, 32)}}, nil
			}}, "lan.test:11434"},
		// Every protected endpoint counts, not only the first: here the second, on a
		// loopback address of its own (this machine's addresses are not asked).
		{Policy{LookupNetIP: lookup, AllowNets: loopbackNets, Protected: []string{"127.0.0.1:11434", "127.0.0.1:8080"},
			InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil }}, "127.0.0.2:8080"},
		// The target by name: its resolved address is refused on its port.
		{Policy{LookupNetIP: lookup, Protected: []string{"lan.test:11434"}}, "10.20.30.40:11434"},
	}
	for _, c := range cases {
		c.policy.connect = noConnect(t, "dial "+c.addr)
		conn, err := c.policy.DialContext(context.Background(), "tcp", c.addr)
		if conn != nil {
			conn.Close()
		}
		if !errors.Is(err, ErrRefused) {
			t.Errorf("dial %s with %+v: %v, want a refusal", c.addr, c.policy, err)
		}
	}
}

// TestPolicyDialRefusesLiveProtected: the endpoints ProtectedSource lists at dial time
// (the other foremen's Ollama targets) are refused as Protected's are, by address and by
// any name resolving there, and one that appears while foreman runs is refused from the
// next dial on. Their other ports stay allowed. The 192.168.x addresses are the resolver
// seam's answers; the connect seam records the one allowed address and dials nothing.
func TestPolicyDialRefusesLiveProtected(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		live = []string{"mac-b.lan:11434"}
	)
	p := Policy{
		LookupNetIP: names(map[string][]string{
			"mac-b.lan":  {"192.168.1.20"},
			"alias.test": {"192.168.1.20"},
			"mac-c.lan":  {"192.168.1.30"},
		}),
		ProtectedSource: func(context.Context) []string {
			mu.Lock()
			defer mu.Unlock()
			return append([]string(nil), live...)
		},
	}
	var connected []string
	p.connect = func(_ context.Context, _, addr string) (net.Conn, error) {
		connected = append(connected, addr)
		return nil, errors.New("no connection in this test")
	}
	dial := func(addr string) error {
		t.Helper()
		conn, err := p.DialContext(context.Background(), "tcp", addr)
		if conn != nil {
			conn.Close()
		}
		return err
	}
	for _, addr := range []string{"192.168.1.20:11434", "alias.test:11434", "mac-b.lan:11434"} {
		if err := dial(addr); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "another foreman on the same NATS") {
			t.Errorf("dial %s, another foreman's target: %v, want a refusal", addr, err)
		}
	}
	if err := dial("192.168.1.30:11434"); errors.Is(err, ErrRefused) {
		t.Errorf("dial mac-c before it is a target: %v", err)
	}
	if err := dial("192.168.1.20:8080"); errors.Is(err, ErrRefused) {
		t.Errorf("dial another port of mac-b: %v", err)
	}
	mu.Lock()
	live = append(live, "mac-c.lan:11434")
	mu.Unlock()
	if err := dial("192.168.1.30:11434"); !errors.Is(err, ErrRefused) {
		t.Errorf("dial mac-c once it is a target: %v, want a refusal", err)
	}
	if want := []string{"192.168.1.30:11434", "192.168.1.20:8080"}; !slices.Equal(connected, want) {
		t.Fatalf("connected to %v, want only %v", connected, want)
	}
}

// TestPolicyDialAllowsOpenedRanges: a name resolving to an opened range is dialled (here
// a loopback receiver), also when the name resolves to a refused address first (the
// metadata address, which the policy skips: it is never dialled).
func TestPolicyDialAllowsOpenedRanges(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(rcv.URL, "http://"))
	p := Policy{AllowNets: loopbackNets, LookupNetIP: names(map[string][]string{
		"hook.test": {"169.254.169.254", "127.0.0.1"},
	})}
	var connected []string
	loopback := onlyLoopback(func(addr string) { t.Errorf("connected to %s, off this machine", addr) })
	p.connect = func(ctx context.Context, network, addr string) (net.Conn, error) {
		connected = append(connected, addr)
		return loopback(ctx, network, addr)
	}
	conn, err := p.DialContext(context.Background(), "tcp", net.JoinHostPort("hook.test", port))
	if err != nil {
		t.Fatalf("dial an opened loopback receiver: %v", err)
	}
	conn.Close()
	if len(connected) != 1 || connected[0] != "127.0.0.1:"+port {
		t.Fatalf("connected to %v, want only the loopback receiver", connected)
	}
}

// TestPolicyDialTriesTheNextAddress: a name's addresses are tried in order, the next one
// after a connection that failed, but none after the call's context ended. The
// 192.0.2.x (TEST-NET-1) addresses are the resolver seam's answers; the connect seam
// hands back one end of a pipe and dials nothing.
func TestPolicyDialTriesTheNextAddress(t *testing.T) {
	t.Parallel()
	for _, cancelled := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		p := Policy{LookupNetIP: names(map[string][]string{"two.test": {"192.0.2.1", "192.0.2.2"}})}
		var connected []string
		p.connect = func(_ context.Context, _, addr string) (net.Conn, error) {
			connected = append(connected, addr)
			if addr == "192.0.2.1:80" {
				if cancelled {
					cancel()
				}
				return nil, errors.New("connection refused")
			}
			c, other := net.Pipe()
			other.Close()
			return c, nil
		}
		conn, err := p.DialContext(ctx, "tcp", "two.test:80")
		cancel()
		if conn != nil {
			conn.Close()
		}
		want := []string{"192.0.2.1:80", "192.0.2.2:80"}
		if cancelled {
			want = want[:1]
		}
		if !slices.Equal(connected, want) || (err == nil) == cancelled {
			t.Errorf("context ended by the first connect %v: connected to %v (%v), want %v", cancelled, connected, err, want)
		}
	}
}

// TestPolicyCheckURL: the submit-time check reads the URL only (no DNS, no connection),
// so the addresses below are inputs, never contacted.
func TestPolicyCheckURL(t *testing.T) {
	t.Parallel()
	p := Policy{Protected: []string{"mac.lan:11434", "127.0.0.1:8080"}}
	for raw, ok := range map[string]bool{
		"http://127.0.0.1/h":           false,
		"http://localhost/h":           false,
		"http://169.254.169.254/h":     false,
		"http://[::]/h":                false,
		"http://mac.lan:11434/h":       false,
		"http://MAC.LAN.:11434/h":      false,
		"http://mac.lan/h":             true, // port 80, not the target's
		"https://hooks.example/h":      true, // names are checked at dial time
		"http://10.0.0.1:11434/h":      true, // private: allowed by default
		"https://[2001:db8::1]:8443/h": true,
	} {
		u, _ := url.Parse(raw)
		err := p.CheckURL(u)
		if (err == nil) != ok {
			t.Errorf("CheckURL(%s) = %v, want allowed %v", raw, err, ok)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("CheckURL(%s) = %v, not ErrRefused", raw, err)
		}
	}
	open := Policy{AllowNets: loopbackNets, Protected: []string{"127.0.0.1:8080"}}
	for raw, ok := range map[string]bool{"http://localhost:9/h": true, "http://127.0.0.1:8080/h": false, "http://localhost:8080/h": false, "http://[::1]:8080/h": false} {
		u, _ := url.Parse(raw)
		if err := open.CheckURL(u); (err == nil) != ok {
			t.Errorf("with loopback opened: CheckURL(%s) = %v, want allowed %v", raw, err, ok)
		}
	}
}

func TestParseNets(t *testing.T) {
	t.Parallel()
	got, err := ParseNets(" 127.0.0.0/8, ::1/128,,10.1.2.3 ,192.168.1.7/24,")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.0/8", "::1/128", "10.1.2.3/32", "192.168.1.0/24"}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i].String() != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "localhost", "10.0.0/8"} {
		if _, err := ParseNets(bad); err == nil {
			t.Errorf("ParseNets(%q) accepted", bad)
		}
	}
}

// TestRefusedDeliveryIsLoggedNotRetried: an event whose receiver name resolves to a
// refused address (the metadata service, or loopback by default) is logged "refused"
// once and acked; the job is untouched. Jobs written straight to the store (as another
// foreman or an older version might have) meet the same check at dial time.
func TestRefusedDeliveryIsLoggedNotRetried(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	rcv := newReceiver(t, nil)
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(rcv.URL, "http://"))
	cfg := fastConfig(b.Store)
	cfg.Policy = Policy{LookupNetIP: names(map[string][]string{
		"metadata.test": {"169.254.169.254"},
		"hook.test":     {"127.0.0.1"},
	})}
	cfg.Policy.connect = noConnect(t, "refused delivery")
	runDispatcher(t, cfg)

	meta := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: "http://metadata.test/latest/meta-data", Events: []broker.State{broker.StateQueued}}})
	local := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: "http://hook.test:" + port + "/h", Events: []broker.State{broker.StateQueued}}})
	direct := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: rcv.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	for _, id := range []string{meta.ID, local.ID, direct.ID} {
		waitLog(t, b.Store, id, func(l []broker.DeliveryAttempt) bool { return len(l) > 0 })
	}
	waitConsumerIdle(t, b)
	for _, id := range []string{meta.ID, local.ID, direct.ID} {
		log, _ := b.Store.Deliveries(ctxT(t), id)
		if len(log) != 1 || log[0].Outcome != broker.OutcomeRefused || log[0].Attempt != 1 || !strings.Contains(log[0].Error, "foreman sends no webhooks there") {
			t.Errorf("job %s delivery log %+v, want one refused attempt", id, log)
		}
		got, _, _ := b.Store.Get(ctxT(t), id)
		if got.State != broker.StateQueued || got.Error != "" {
			t.Errorf("a refused webhook changed the job: %+v", got)
		}
	}
	if n := len(rcv.hits); n != 0 {
		t.Fatalf("the loopback receiver got %d requests", n)
	}
}

// Addresses that lead to a refused one by another spelling are refused as it is: IPv6
// forms carrying an IPv4 address, site-local IPv6, and (with DenyPrivate) CGNAT space.
// CheckAddr and CheckURL connect to nothing; "a public address" is 192.0.2.33
// (TEST-NET-1, RFC 5737), so even a mistake could not reach a real host.
func TestPolicyEmbeddedAndExtraRanges(t *testing.T) {
	t.Parallel()
	deny := Policy{DenyPrivate: true}
	for _, c := range []struct {
		policy Policy
		addr   string
		ok     bool
	}{
		{Policy{}, "64:ff9b::7f00:1", false},                       // NAT64 of 127.0.0.1
		{Policy{}, "64:ff9b::a9fe:a9fe", false},                    // NAT64 of 169.254.169.254
		{Policy{}, "64:ff9b::c000:221", true},                      // NAT64 of a public address
		{Policy{}, "64:ff9b:1:7f00:1::", false},                    // local-use /48 of 127.0.0.1
		{Policy{}, "64:ff9b:1::7f00:1", false},                     // local-use read as /96
		{Policy{}, "64:ff9b:1:c000:2:2100::", true},                // local-use /48 of a public address
		{Policy{}, "::7f00:1", false},                              // IPv4-compatible 127.0.0.1
		{Policy{}, "::a9fe:a9fe", false},                           // IPv4-compatible 169.254.169.254
		{Policy{}, "2002:7f00:1::1", false},                        // 6to4 of 127.0.0.1
		{Policy{}, "2002:a9fe:a9fe::1", false},                     // 6to4 of 169.254.169.254
		{Policy{}, "2002:c000:221::1", true},                       // 6to4 of a public address
		{Policy{}, "::ffff:0:7f00:1", false},                       // IPv4-translated 127.0.0.1
		{Policy{}, "::ffff:0:a9fe:a9fe", false},                    // IPv4-translated 169.254.169.254
		{Policy{}, "::ffff:0:c000:221", true},                      // IPv4-translated public address
		{deny, "::ffff:0:c0a8:101", false},                         // IPv4-translated 192.168.1.1
		{Policy{}, "fec0::1", false},                               // site-local
		{Policy{}, "2001:db8::1", true},                            // none of these
		{Policy{}, "100.64.0.1", true},                             // CGNAT: allowed by default
		{deny, "100.64.0.1", false},                                // refused with DenyPrivate
		{deny, "100.127.255.254", false},                           // (Tailscale's range)
		{deny, "100.128.0.1", true},                                // just past it
		{deny, "64:ff9b::a00:1", false},                            // NAT64 of 10.0.0.1
		{Policy{}, "64:ff9b::a00:1", true},                         // allowed without DenyPrivate
		{Policy{AllowNets: loopbackNets}, "64:ff9b::7f00:1", true}, // loopback opened
	} {
		err := c.policy.CheckAddr(context.Background(), netip.MustParseAddr(c.addr), 80)
		if (err == nil) != c.ok {
			t.Errorf("CheckAddr(%s) with %+v = %v, want allowed %v", c.addr, c.policy, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("CheckAddr(%s) = %v, not ErrRefused", c.addr, err)
		}
		u, _ := url.Parse("http://" + netip.AddrPortFrom(netip.MustParseAddr(c.addr), 80).String() + "/h")
		if err := c.policy.CheckURL(u); (err == nil) != c.ok {
			t.Errorf("CheckURL(%s) = %v, want allowed %v", u, err, c.ok)
		}
	}
}

// Numeric hosts that resolvers read as IPv4 addresses (inet_aton) are checked at submit
// like the dotted-quad they stand for (a URL check: nothing is resolved or dialled).
func TestPolicyCheckURLInetAtonForms(t *testing.T) {
	t.Parallel()
	for raw, ok := range map[string]bool{
		"http://2130706433/h":     false, // 127.0.0.1
		"http://0177.0.0.1/h":     false,
		"http://0x7f.1/h":         false,
		"http://127.1/h":          false,
		"http://0x7F000001/h":     false,
		"http://0xa9.254.43518/h": false, // 169.254.169.254
		"http://0/h":              false, // 0.0.0.0
		"http://3221226017/h":     true,  // 192.0.2.33
		"http://127.0.0.1.5/h":    true,  // five parts: a name
		"http://0x1ffffffff/h":    true,  // too large: a name
		"http://4294967296/h":     true,  // 2^32, one too large: a name
		"http://127.16777216/h":   true,  // the last of two parts fills 3 bytes: 2^24 is a name
		"http://255.255.65535/h":  false, // 255.255.255.255, broadcast
		"http://127.0.256/h":      false, // 127.0.1.0 (the last part fills two bytes)
		"http://08.0.0.1/h":       true,  // not octal: a name
		"http://127.0.0.09/h":     true,  // nor is "09" (loopback were it read as decimal)
		"http://0x/h":             false, // "0x" alone reads as 0: 0.0.0.0
		"http://example.123/h":    true,
		"http://1e3.example/h":    true,
	} {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		err = (&Policy{}).CheckURL(u)
		if (err == nil) != ok {
			t.Errorf("CheckURL(%s) = %v, want allowed %v", raw, err, ok)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("CheckURL(%s) = %v, not ErrRefused", raw, err)
		}
	}
	for in, want := range map[string]string{"2130706433": "127.0.0.1", "0177.0.0.1": "127.0.0.1", "0x7f.1": "127.0.0.1", "127.1": "127.0.0.1", "10.1.2": "10.1.0.2", "3221226017": "192.0.2.33", "0xc0.0250.1": "192.168.0.1"} {
		if a, ok := inetAton(in); !ok || a.String() != want {
			t.Errorf("inetAton(%q) = %v %v, want %s", in, a, ok, want)
		}
	}
}

// A receiver answering with more headers than a webhook needs fails the attempt instead
// of having them read: each attempt in flight held up to Go's default, 10 MiB.
func TestClientBoundsResponseHeaders(t *testing.T) {
	t.Parallel()
	big := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Filler", strings.Repeat("x", 64<<10))
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(big.Close)
	p := Policy{AllowNets: loopbackNets}
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodPost, big.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.Client().Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("a 64 KiB response header was read (status %d), want the attempt failed", resp.StatusCode)
	}
	if !strings.Contains(err.Error(), "headers exceeded") {
		t.Fatalf("error %v, want the response headers' bound", err)
	}
}

// A receiver answering with a redirect is not followed (the signed event would go where
// the job's owner did not say): the redirect is the attempt's answer, a failed one.
func TestRedirectIsNotFollowed(t *testing.T) {
	t.Parallel()
	elsewhere := newReceiver(t, nil)
	redirecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, elsewhere.URL+"/h", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(redirecting.Close)

	b := brokertest.New(t)
	cfg := fastConfig(b.Store)
	cfg.Attempts = 1
	runDispatcher(t, cfg)
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: redirecting.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	log := waitLog(t, b.Store, j.ID, func(l []broker.DeliveryAttempt) bool { return len(l) > 0 })
	if log[0].Status != http.StatusTemporaryRedirect || log[0].Outcome != broker.OutcomeFailed {
		t.Errorf("delivery log %+v, want one failed attempt answered 307", log)
	}
	select {
	case h := <-elsewhere.hits:
		t.Fatalf("the redirect was followed: %s", h.body)
	default:
	}
}
