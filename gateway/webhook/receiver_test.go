package webhook

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The receiver a URL's attempts count against is not multiplied by what costs nothing:
// subdomains (a wildcard DNS name per job), letter case, a trailing dot, the spellings
// of one address, or IPv6 addresses of one /64.
func TestReceiverOfFoldsWhatIsFreeToMultiply(t *testing.T) {
	t.Parallel()
	same := [][]string{
		{"http://h1.evil.test/h", "http://H2.EVIL.TEST./h", "https://a.b.evil.test:80/x", "http://evil.test"},
		{"https://hooks.eu.example.co.uk/", "https://api.example.co.uk:443/other"},
		{"http://1.1.1.1/", "http://16843009/", "http://0x01010101/", "http://1.65793/", "http://[::ffff:1.1.1.1]/"},
		{"http://[2001:db8::1]/", "http://[2001:db8::2:3]/", "http://[2001:DB8:0:0:ffff::9]:80/"},
	}
	for _, urls := range same {
		for _, u := range urls[1:] {
			if a, b := receiverOf(urls[0]), receiverOf(u); a != b {
				t.Errorf("receiverOf(%q) = %q, receiverOf(%q) = %q: want one receiver", urls[0], a, u, b)
			}
		}
	}
	differ := []string{
		"http://evil.test/", "http://evil.test:8080/", "http://other.test/",
		"https://alice.github.io/", "https://bob.github.io/", "http://example.co.uk/", "http://other.co.uk/",
		"http://1.1.1.1/", "http://1.1.1.2/", "http://[2001:db8::1]/", "http://[2001:db8:0:1::1]/",
	}
	seen := map[string]string{}
	for _, u := range differ {
		r := receiverOf(u)
		if prev, ok := seen[r]; ok {
			t.Errorf("receiverOf(%q) = receiverOf(%q) = %q: want different receivers", u, prev, r)
		}
		seen[r] = u
	}
}

// hangingReceiver answers no request until the test ends; most is the number it held at
// once.
type hangingReceiver struct {
	*httptest.Server
	mu             sync.Mutex
	inFlight, most int
}

func newHangingReceiver(t *testing.T) *hangingReceiver {
	h := &hangingReceiver{}
	release := make(chan struct{})
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.inFlight++
		h.most = max(h.most, h.inFlight)
		h.mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		h.mu.Lock()
		h.inFlight--
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	t.Cleanup(func() { close(release) }) // before the server closes, which waits for its handlers
	return h
}

func (h *hangingReceiver) mostAtOnce() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.most
}

// laneCensus is what a dispatcher's lanes hold at one moment.
type laneCensus struct {
	lanes     int
	running   int // lanes with a goroutine
	inFlight  int // attempts holding a receiver's slot
	receivers int // receivers with a slot held or waited for
	bodies    int // events not being tried that hold their body in memory
}

// census counts d's lanes. settled is true when every lane is either waiting for its
// next try without a goroutine, or holding or waiting for its receiver's slot: none is
// between two of these.
func census(d *Dispatcher) (c laneCensus, settled bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.slotsMu.Lock()
	defer d.slotsMu.Unlock()
	users := 0
	for _, rs := range d.slots {
		users += rs.users
		c.inFlight += len(rs.ch)
	}
	c.receivers = len(d.slots)
	for _, l := range d.lanes {
		c.lanes++
		if l.running {
			c.running++
		}
		for i, e := range l.queue {
			if (!l.running || i > 0) && e.body != nil {
				c.bodies++
			}
		}
	}
	return c, users+c.lanes-c.running == c.lanes
}

// settledCensus waits until all n jobs' lanes are settled and returns their census.
func settledCensus(t *testing.T, d *Dispatcher, n int) laneCensus {
	t.Helper()
	var c laneCensus
	eventually(t, 15*time.Second, fmt.Sprintf("the %d jobs' lanes settled", n), func() bool {
		var settled bool
		c, settled = census(d)
		return settled && c.lanes == n
	})
	return c
}

// Jobs naming one domain's hostnames (h1.evil.test, h2.evil.test, ..., resolving to one
// server) share its PerReceiver connections: each hostname had its own.
func TestHostnamesOfOneDomainShareTheCap(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	u, err := url.Parse(hang.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 2
	cfg.Timeout = time.Minute
	cfg.Policy.LookupNetIP = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		if strings.HasSuffix(host, ".evil.test") {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, fmt.Errorf("no such host %s", host)
	}
	d, _ := startDispatcher(t, cfg)

	const n = 8
	for i := range n {
		hook := fmt.Sprintf("http://h%d.evil.test:%s/h", i, u.Port())
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hook, Events: []broker.State{broker.StateQueued}}})
	}
	waitConsumerIdle(t, b)
	c := settledCensus(t, d, n)
	if c.inFlight > cfg.PerReceiver || c.receivers != 1 {
		t.Fatalf("%d attempts in flight to %d receivers, want at most %d to one: %+v", c.inFlight, c.receivers, cfg.PerReceiver, c)
	}
	if most := hang.mostAtOnce(); most > cfg.PerReceiver {
		t.Fatalf("the server behind the hostnames had %d requests at once, want at most %d", most, cfg.PerReceiver)
	}
}

// A receiver that never answers, named by many jobs, costs at most 2 × PerReceiver lane
// goroutines (attempts in flight, and lanes waiting for one to end); the other jobs'
// events wait in the store, their lanes holding neither a goroutine nor a body.
func TestHangingReceiverHoldsBoundedLanes(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 2
	cfg.Timeout = time.Minute
	d, _ := startDispatcher(t, cfg)

	const n = 12
	for range n {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h"}})
		setState(t, b.Store, j.ID, broker.StateWorking) // a second event behind the first
	}
	waitConsumerIdle(t, b)
	c := settledCensus(t, d, n)
	if c.running > 2*cfg.PerReceiver || c.inFlight > cfg.PerReceiver || c.bodies != 0 {
		t.Fatalf("%d lanes running, %d attempts in flight, %d events not being tried holding their body; want at most %d, %d and none",
			c.running, c.inFlight, c.bodies, 2*cfg.PerReceiver, cfg.PerReceiver)
	}
	if most := hang.mostAtOnce(); most > cfg.PerReceiver {
		t.Fatalf("the hanging receiver had %d requests at once, want at most %d", most, cfg.PerReceiver)
	}
}

// Events parked on a busy receiver (every slot taken, PerReceiver lanes waiting) go as
// soon as a slot frees, not when their pause runs out: a batch of jobs naming one fast
// receiver is delivered at the receiver's pace.
func TestParkedEventsGoAsSlotsFree(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	var mu sync.Mutex
	got := map[string]bool{}
	slow := make(chan struct{}) // the first attempts wait here, so that the others park
	var calls int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		first := calls <= 2
		mu.Unlock()
		if first {
			<-slow
		}
		mu.Lock()
		got[r.Header.Get("Webhook-Id")] = true
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 1
	cfg.busyPause = time.Hour // only a freed slot can wake a parked event within the test
	d, _ := startDispatcher(t, cfg)

	const n = 20
	for range n {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: srv.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	waitConsumerIdle(t, b)
	c := settledCensus(t, d, n)
	if c.running > 2*cfg.PerReceiver {
		t.Fatalf("%d lanes running while the receiver is busy, want at most %d", c.running, 2*cfg.PerReceiver)
	}
	close(slow)
	eventually(t, 30*time.Second, fmt.Sprintf("all %d events delivered", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == n
	})
}
