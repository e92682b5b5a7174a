package natsd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// The listener holds only so many connections at once, logged in or not (ADR-0093):
// without a cap nats-server takes 65,536, and one local process that only opened
// connections and let each wait out its login time held 17,000 of foreman's file
// descriptors within seconds, on the way to every one the process may open.
//
// Not parallel: it lowers the cap, which Start reads.
func TestListenerConnectionsAreCapped(t *testing.T) {
	defer natsd.SetListenerMaxConns(4)()
	b := brokertest.New(t, withListener(nil)) // foreman's in-process connection is one
	url := b.Server.ClientURL()
	for range 3 {
		connectClient(t, url)
	}
	extra, err := nats.Connect(url, nats.UserInfo(clientUser, clientPass), nats.Timeout(10*time.Second))
	if err == nil {
		extra.Close()
		t.Fatal("a connection past the listener's cap was accepted")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "maximum connections exceeded") {
		t.Fatalf("connection past the cap: %v, want maximum connections exceeded", err)
	}
	// foreman's own connection still works.
	if err := b.Conn.Flush(); err != nil {
		t.Fatalf("in-process connection: %v", err)
	}
}
