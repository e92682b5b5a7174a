package webhook

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// Receivers are what costs an attacker little to multiply: every port of one address
// is a receiver, every IPv4 address (one that drops packets needs no listener) and
// every registered domain too. Jobs naming many receivers that hang held PerReceiver
// connections each, without bound in all (one token's jobs to blackholed ports: a
// socket each, until foreman ran out of file descriptors). At most MaxInFlight attempts
// are in flight at once; the rest wait for a place, and go out once places free.
func TestManyHangingReceiversShareMaxInFlight(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	hang := newHangingReceiver(t)
	u, err := url.Parse(hang.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig(b.Store)
	cfg.PerReceiver = 2
	cfg.MaxInFlight = 3
	cfg.Timeout = time.Minute
	cfg.Policy.LookupNetIP = func(_ context.Context, _, host string) ([]netip.Addr, error) {
		if strings.HasSuffix(host, ".test") {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
		}
		return nil, fmt.Errorf("no such host %s", host)
	}
	d, stop := startDispatcher(t, cfg)

	const n = 8 // receivers, one job each: evil0.test, evil1.test, ...
	for i := range n {
		hook := fmt.Sprintf("http://evil%d.test:%s/h", i, u.Port())
		submit(t, b.Store, &broker.Job{Webhook: &broker.Webhook{URL: hook, Events: []broker.State{broker.StateQueued}}})
	}
	waitConsumerIdle(t, b)
	// Every job's attempt is either at the receiver or waiting for a place.
	eventually(t, 15*time.Second, fmt.Sprintf("%d attempts at the receiver or waiting for a place", n), func() bool {
		hang.mu.Lock()
		at := hang.inFlight
		hang.mu.Unlock()
		d.slotsMu.Lock()
		waiting := d.globalWaiting
		d.slotsMu.Unlock()
		return at+waiting == n
	})
	if most := hang.mostAtOnce(); most > cfg.MaxInFlight {
		t.Fatalf("%d receivers' attempts in flight at once, want at most MaxInFlight %d", most, cfg.MaxInFlight)
	}
	// A stop ends the attempts waiting for a place too (stop fails the test if Run does
	// not return); the next dispatcher takes every event up, within the cap again.
	stop()
	eventually(t, 15*time.Second, "the stopped attempts gone from the receiver", func() bool {
		hang.mu.Lock()
		defer hang.mu.Unlock()
		return hang.inFlight == 0
	})
	startDispatcher(t, cfg)
	hang.recover()
	eventually(t, 30*time.Second, "every event delivered", func() bool { return len(hang.answered()) >= n })
	waitNoPending(t, b.Store)
	seen := map[string]bool{}
	for _, h := range hang.answered() {
		if id := h.header.Get(HeaderID); seen[id] {
			t.Errorf("%s delivered twice", id)
		} else {
			seen[id] = true
		}
	}
	if len(seen) != n {
		t.Errorf("%d events delivered, want %d", len(seen), n)
	}
	if most := hang.mostAtOnce(); most > cfg.MaxInFlight {
		t.Fatalf("%d attempts in flight at once, want at most %d", most, cfg.MaxInFlight)
	}
}
