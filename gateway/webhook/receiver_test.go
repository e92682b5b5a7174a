package webhook

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
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

// hangingReceiver answers no request until recover is called (or the test ends), then
// 200 to each; most is the number it held at once, got the requests it answered.
type hangingReceiver struct {
	*httptest.Server
	recover        func()
	mu             sync.Mutex
	inFlight, most int
	got            []hit
}

func newHangingReceiver(t *testing.T) *hangingReceiver {
	h := &hangingReceiver{}
	release := make(chan struct{})
	var once sync.Once
	h.recover = func() { once.Do(func() { close(release) }) }
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.inFlight++
		h.most = max(h.most, h.inFlight)
		h.mu.Unlock()
		answered := false
		select {
		case <-release:
			answered = true
		case <-r.Context().Done(): // an attempt abandoned: its dispatcher stopped
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		h.inFlight--
		if answered {
			got := hit{header: r.Header.Clone(), body: body}
			got.job, _ = broker.DecodeJob(body)
			h.got = append(h.got, got)
		}
	}))
	t.Cleanup(h.Close)
	t.Cleanup(h.recover) // before the server closes, which waits for its handlers
	return h
}

// answered returns the requests h answered, in order.
func (h *hangingReceiver) answered() []hit {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
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
	timers    int // lanes waiting on a timer of their own
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
		} else if l.timer != nil {
			c.timers++
		}
		for i, e := range l.queue {
			if (!l.running || i > 0) && e.body != nil {
				c.bodies++
			}
		}
	}
	return c, users+c.lanes-c.running == c.lanes
}

// settledCensus waits until at least n jobs' lanes are settled and returns their census.
func settledCensus(t *testing.T, d *Dispatcher, n int) laneCensus {
	t.Helper()
	var c laneCensus
	eventually(t, 15*time.Second, fmt.Sprintf("%d jobs' lanes settled", n), func() bool {
		var settled bool
		c, settled = census(d)
		return settled && c.lanes >= n
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

// A receiver that never answers, named by many jobs, holds at most laneCap (4 ×
// PerReceiver) jobs' lanes, of which at most 2 × PerReceiver have a goroutine, and none
// a body or a timer of its own; the other jobs' events wait in the store only, and a
// restart takes them up the same way. Once the receiver answers, every event goes out
// exactly once, each job's in order, taken up as lanes free (no claim runs on its
// period here). Each lane stayed in memory while the receiver hung: 200 jobs, 200 lanes.
func TestHangingReceiverHoldsBoundedLanes(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 2
	cfg.Timeout = time.Hour
	cfg.ClaimEvery = time.Hour // only lanes freed take the stored events up
	cfg.busyPause = time.Hour  // only a slot freed wakes a parked lane
	d, stop := startDispatcher(t, cfg)

	const n = 200
	jobs := make([]string, n)
	for i := range jobs {
		j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h"}})
		setState(t, b.Store, j.ID, broker.StateWorking) // a second event behind the first
		jobs[i] = j.ID
	}
	waitConsumerIdle(t, b)
	capped := func(d *Dispatcher) {
		t.Helper()
		c := settledCensus(t, d, d.laneCap())
		if c.lanes > d.laneCap() {
			t.Fatalf("%d jobs' lanes in memory, want at most %d", c.lanes, d.laneCap())
		}
		if c.running > 2*cfg.PerReceiver || c.inFlight > cfg.PerReceiver || c.bodies != 0 || c.timers != 0 {
			t.Fatalf("%d lanes running, %d attempts in flight, %d events not being tried holding their body, %d lanes with a timer; want at most %d, %d, none and none",
				c.running, c.inFlight, c.bodies, c.timers, 2*cfg.PerReceiver, cfg.PerReceiver)
		}
	}
	capped(d)
	if most := hang.mostAtOnce(); most > cfg.PerReceiver {
		t.Fatalf("the hanging receiver had %d requests at once, want at most %d", most, cfg.PerReceiver)
	}
	if p, err := b.Store.PendingDeliveries(ctxT(t)); err != nil || len(p) != 2*n {
		t.Fatalf("%d pending deliveries stored (%v), want all %d events", len(p), err, 2*n)
	}
	// A manual redelivery carries its record in memory: one of a job with no lane waits
	// for the receiver's lanes to free.
	d.mu.Lock()
	spilled := ""
	for _, id := range jobs {
		if d.lanes[id] == nil {
			spilled = id
			break
		}
	}
	d.mu.Unlock()
	if r := redeliver(t, b, spilled); r.Error == "" {
		t.Fatalf("redelivery of job %s, whose receiver holds its most lanes, accepted: %+v", spilled, r)
	}

	stop()
	d, _ = startDispatcher(t, cfg)
	capped(d)
	hang.recover()
	// 400 deliveries take 10-20 s here, and over a minute on a loaded CI machine under -race:
	// the wait is bounded by the deliveries' progress, not by their total time.
	steadily(t, 30*time.Second, "events delivered", 2*n, func() int { return len(hang.answered()) })
	waitNoPending(t, b.Store)
	got := map[string][]broker.State{}
	seen := map[string]bool{}
	answered := hang.answered()
	for _, h := range answered {
		if id := h.header.Get(HeaderID); seen[id] {
			t.Errorf("%s delivered twice", id)
		} else {
			seen[id] = true
		}
		got[h.job.ID] = append(got[h.job.ID], h.job.State)
	}
	want := []broker.State{broker.StateQueued, broker.StateWorking}
	for _, id := range jobs {
		if !slices.Equal(got[id], want) {
			t.Errorf("job %s: events arrived as %v, want %v", id, got[id], want)
		}
	}
	if len(answered) != 2*n {
		t.Errorf("%d deliveries, want %d", len(answered), 2*n)
	}
	eventually(t, 15*time.Second, "no receiver marked as having events in the store", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.spills) == 0
	})
}

// Lanes parked on a busy receiver have no timer each: the receiver's one backstop wakes
// the lane parked longest every busyPause, which asks again and, the receiver still
// busy, parks last.
func TestParkedLanesAskAgainOnTheReceiversBackstop(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 1
	cfg.Timeout = time.Hour
	cfg.busyPause = 100 * time.Millisecond
	d, _ := startDispatcher(t, cfg)
	for range d.laneCap() {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	settledCensus(t, d, d.laneCap())
	parked := func() []string {
		d.slotsMu.Lock()
		defer d.slotsMu.Unlock()
		if rs := d.slots[receiverOf(hang.URL)]; rs != nil {
			return slices.Clone(rs.parked)
		}
		return nil
	}
	var first []string
	eventually(t, 15*time.Second, "lanes parked", func() bool {
		first = parked()
		return len(first) == d.laneCap()-2*cfg.PerReceiver
	})
	eventually(t, 15*time.Second, fmt.Sprintf("the lane parked longest (of %v) parked last", first), func() bool {
		p := parked()
		return len(p) == len(first) && p[len(p)-1] == first[0]
	})
}

// claimsHeld holds the dispatcher's claims after its start until open is closed.
type claimsHeld struct {
	Store
	open chan struct{}
}

func (s claimsHeld) ClaimPendingDeliveries(ctx context.Context, skip func(string, uint64) bool) ([]broker.PendingDelivery, []broker.PendingRef, error) {
	if skip != nil {
		select {
		case <-s.open:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		}
	}
	return s.Store.ClaimPendingDeliveries(ctx, skip)
}

// A job's event left in the store (its receiver held its most lanes) goes out before
// the job's later event, which comes once the receiver has room again but before a
// claim took the first up: sent at once, it went first, and the first was then
// superseded (ADR-0055), a state the receiver never got.
func TestStoredEventGoesBeforeItsJobsLaterOne(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	claims := make(chan struct{})
	cfg := fastConfig(b.Store)
	cfg.Store = claimsHeld{Store: b.Store, open: claims}
	cfg.PerReceiver = 1
	cfg.Timeout = time.Hour
	cfg.ClaimEvery = time.Hour
	cfg.busyPause = time.Hour
	d, _ := startDispatcher(t, cfg)

	for range d.laneCap() {
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h", Events: []broker.State{broker.StateQueued}}})
	}
	settledCensus(t, d, d.laneCap())
	j := submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hang.URL + "/h"}})
	waitConsumerIdle(t, b)
	rcv := receiverOf(hang.URL)
	eventually(t, 15*time.Second, "the queued event left in the store", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.spills[rcv] != nil
	})
	d.mu.Lock()
	s, laned := d.spills[rcv], d.lanes[j.ID] != nil
	d.mu.Unlock()
	if s == nil || laned {
		t.Fatalf("job %s's queued event has a lane (%v), or its receiver no events in the store (%v)", j.ID, laned, s)
	}
	before := s.gen
	hang.recover()
	eventually(t, 15*time.Second, "the lanes delivered", func() bool {
		c, _ := census(d)
		return c.lanes == 0
	})
	setState(t, b.Store, j.ID, broker.StateWorking)
	eventually(t, 15*time.Second, "the working event taken", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		s := d.spills[rcv]
		return d.lanes[j.ID] != nil || (s != nil && s.gen > before) || len(hang.answered()) > d.laneCap()
	})
	close(claims)
	waitNoPending(t, b.Store)
	var got []broker.State
	for _, h := range hang.answered() {
		if h.job.ID == j.ID {
			got = append(got, h.job.State)
		}
	}
	if want := []broker.State{broker.StateQueued, broker.StateWorking}; !slices.Equal(got, want) {
		t.Fatalf("job %s's events arrived as %v, want %v", j.ID, got, want)
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
	c := settledCensus(t, d, min(n, d.laneCap())) // the others' events wait in the store
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
