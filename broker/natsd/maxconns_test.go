package natsd_test

import (
	"bufio"
	"net"
	neturl "net/url"
	"strings"
	"testing"
	"time"

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
	// Read what the server says first, not what a client makes of it: a client may
	// find the connection closed before it reads the refusal.
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
	// The server sends its INFO first, then the refusal: a connection it took waits for
	// a login instead (and past its login time says so).
	r := bufio.NewReader(extra)
	var said []string
	for len(said) < 2 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("connection past the cap, after %q: %v", said, err)
		}
		said = append(said, line)
		if strings.HasPrefix(line, "-ERR") {
			break
		}
	}
	if last := said[len(said)-1]; !strings.Contains(strings.ToLower(last), "maximum connections exceeded") {
		t.Fatalf("connection past the cap was answered %q, want maximum connections exceeded", said)
	}
	// foreman's own connection still works.
	if err := b.Conn.Flush(); err != nil {
		t.Fatalf("in-process connection: %v", err)
	}
}
