package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"testing"
	"time"
)

// TestPolicyDialIsBoundedAndSharedOverAddresses: net/http dials with a context cut from
// the request's deadline (the dial may outlive the request, for a later one to use), so
// the policy's dial must carry a deadline of its own. Without one, a receiver's address
// that drops packets held each attempt's dial until the system gave up (minutes), after
// the attempt itself had ended and freed the receiver's slot for the next one, and a name
// resolving to many such addresses held it for each in turn. Each address also gets a
// share of it: one that drops packets leaves time for the next (a broken IPv6 path before
// a working IPv4 one). The first address here is the resolver seam's answer, never
// dialled: its connect reports what deadline it was given.
func TestPolicyDialIsBoundedAndSharedOverAddresses(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t, nil)
	u, _ := url.Parse(rcv.URL)
	p := Policy{
		AllowNets:   loopbackNets,
		LookupNetIP: names(map[string][]string{"hooks.test": {"192.0.2.1", "127.0.0.1"}}),
	}
	var (
		mu        sync.Mutex
		deadlines = map[string]time.Time{}
	)
	p.connect = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dl, ok := ctx.Deadline()
		mu.Lock()
		deadlines[addr] = dl
		mu.Unlock()
		if !ok {
			t.Errorf("connect %s without a deadline: an address that drops packets holds the dial until the system gives up", addr)
		}
		if ap := netip.MustParseAddrPort(addr); !ap.Addr().IsLoopback() {
			// Dropped packets: the connect ends at its deadline (reported at once here).
			return nil, &net.OpError{Op: "dial", Net: network, Err: context.DeadlineExceeded}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second) // as an attempt's
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://hooks.test:"+u.Port()+"/", nil)
	resp, err := p.Client().Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	rcv.next(t)
	mu.Lock()
	defer mu.Unlock()
	first, second := deadlines["192.0.2.1:"+u.Port()], deadlines["127.0.0.1:"+u.Port()]
	if first.IsZero() || second.IsZero() || !first.Before(second) {
		t.Errorf("deadlines: first address %v, second %v: want each bounded, the first leaving time for the second", first, second)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("the request's own deadline passed")
	}
}
