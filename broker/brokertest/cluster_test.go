package brokertest

import (
	"fmt"
	"net"
	"testing"
)

// TestClusterRoutesGoThroughTheProxies: no route connection between two nodes bypasses
// the proxies, as they form and after a cut and heal, so CutRoute and Kill cut them all.
// A node that learned a peer's real route port by gossip (from the third node, while it
// had no route to that peer) connected to it directly, and CutRoute then waited 30s for a
// cut that never came.
func TestClusterRoutesGoThroughTheProxies(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			c := NewCluster(t, 3)
			c.HealRoute(0, 1)
			c.HealRoute(0, 2)
			c.HealRoute(1, 2)
			c.requireProxied(t, "as the cluster formed")
			// With 1-2 cut, 2-3 joining again has node 3 tell node 1 about node 2.
			c.CutRoute(0, 1)
			c.CutRoute(1, 2)
			c.HealRoute(1, 2)
			c.HealRoute(0, 1)
			c.requireProxied(t, "after a cut and heal")
		})
	}
}

// requireProxied fails t if a node has a route connection to another's own route port:
// one that no proxy carries.
func (c *Cluster) requireProxied(t *testing.T, when string) {
	t.Helper()
	port := map[int]int{}
	for j, ns := range c.Nodes {
		port[ns.ClusterAddr().Port] = j
	}
	for i, ns := range c.Nodes {
		rz, err := ns.Routez(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rz.Routes {
			if j, direct := port[r.Port]; direct {
				t.Errorf("%s: node %d routes to node %d directly (%s:%d, account %q)", when, i+1, j+1, r.IP, r.Port, r.Account)
			}
		}
	}
}

// TestRefusingAddrRefuses: the address the nodes advertise takes no connection, and no
// listener can take its port while the test runs.
func TestRefusingAddrRefuses(t *testing.T) {
	addr := refusingAddr(t)
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatalf("%s took a connection", addr)
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("a listener took %s", addr)
	}
}
