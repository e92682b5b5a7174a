package brokertest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Cluster is n nats-servers with JetStream, routed to each other on loopback: a real
// cluster in one process, for tests of what foreman does when a node dies. Foreman's
// streams on it have 3 replicas.
//
// Every connection to a node, its clients' and its routes' both ways, goes through a
// proxy of its own, so Kill can cut them all before the node stops: to the others the node
// vanishes, as after kill -9 or a pulled cable, and they elect new leaders only when its
// heartbeats are missed.
type Cluster struct {
	Nodes   []*server.Server
	t       testing.TB
	clients []*Proxy   // clients[i]: clients to node i
	routes  [][]*Proxy // routes[i][j]: node i's route to node j
}

// NewCluster starts n clustered nats-servers, each on its own store directory under
// t.TempDir(), and waits until JetStream has a meta leader. They stop when the test ends.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, routes: make([][]*Proxy, n)}
	// Every node's routes to its peers go through proxies started first, whose addresses
	// its configuration names; a proxy learns its target, the peer's route port, once the
	// peer listens there. The nodes take their route ports from the system (a port chosen
	// here beforehand and bound at start could be taken meanwhile by a cluster of a test
	// running alongside: the node then never listened for routes, silently, and was not
	// ready for 30s). Until a peer listens, its proxies cut the connections to it, and the
	// nodes try again, as they do for a peer not yet started.
	for i := range n {
		c.routes[i] = make([]*Proxy, n)
		for j := range n {
			if j != i {
				c.routes[i][j] = NewProxy(t, "")
			}
		}
	}
	// Every node advertises, as its route address, one that refuses connections. The nodes
	// gossip: a node that has just routed to one peer tells the others that peer's route
	// address, and one with no route to it yet (or none since a cut) connects there
	// itself. Told the node's real port, it connected past the proxies, on a route that
	// CutRoute and Kill could not cut; told this address, it fails once and gives up, and
	// the nodes route only as configured, through the proxies. (An accepted route that is
	// asked to reconnect uses the advertised address too.)
	advertise := refusingAddr(t)
	for i := range n {
		var peers []string
		for j := range n {
			if j != i {
				peers = append(peers, "nats://"+c.routes[i][j].Addr())
			}
		}
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			// NoAdvertise: clients do not learn the real client ports behind the proxies;
			// Advertise: nor do peers the real route ports (see above).
			Cluster: server.ClusterOpts{Name: "foreman-test", Host: "127.0.0.1", Port: -1, NoAdvertise: true, Advertise: advertise},
			Routes:  server.RoutesFromStr(strings.Join(peers, ",")),
		}
		ns, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("cluster node %d: %v", i+1, err)
		}
		ns.Start()
		// A node of a forming cluster on a loaded 2-core machine took over 10s (CI).
		if !ns.ReadyForConnections(30 * time.Second) {
			t.Fatalf("cluster node %d not ready within 30s", i+1)
		}
		c.Nodes = append(c.Nodes, ns)
		addr := ns.Addr().(*net.TCPAddr)
		c.clients = append(c.clients, NewProxy(t, addr.String()))
		for j := range n {
			if j != i {
				c.routes[j][i].setTarget(ns.ClusterAddr().String())
			}
		}
	}
	t.Cleanup(func() {
		for i := range c.Nodes {
			c.Kill(i)
		}
	})
	c.waitFor(30*time.Second, "a JetStream meta leader", func() bool {
		for _, ns := range c.Nodes {
			if ns.Running() && ns.JetStreamIsLeader() {
				return true
			}
		}
		return false
	})
	return c
}

// refusingAddr is a loopback address that refuses every connection until the test ends:
// the local end of a connection the test holds open, a port that no listener can take
// meanwhile (the socket holding it was not bound for reuse).
func refusingAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("refusing address: %v", err)
	}
	defer ln.Close()
	out, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("refusing address: %v", err)
	}
	in, err := ln.Accept()
	if err != nil {
		out.Close()
		t.Fatalf("refusing address: %v", err)
	}
	t.Cleanup(func() {
		out.Close()
		in.Close()
	})
	return out.LocalAddr().String()
}

// URLs is the client URL of every node, comma-separated (FOREMAN_NATS_URL).
func (c *Cluster) URLs() string {
	var urls []string
	for _, p := range c.clients {
		urls = append(urls, "nats://"+p.Addr())
	}
	return strings.Join(urls, ",")
}

// Connect connects to the cluster as foreman does with FOREMAN_NATS_URL, reconnecting
// quickly to another node when its own goes; closed when the test ends.
func (c *Cluster) Connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect to cluster: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Open opens a store with 3 replicas on a new connection to the cluster.
func (c *Cluster) Open(t testing.TB, adjust func(*broker.Config)) *broker.Store {
	t.Helper()
	return openStore(t, c.Connect(t), adjust, "the cluster")
}

// openStore opens a store with 3 replicas on nc (on where, for its failure), adjusted.
func openStore(t testing.TB, nc *nats.Conn, adjust func(*broker.Config), where string) *broker.Store {
	t.Helper()
	cfg := broker.Config{Conn: nc, Replicas: 3}
	if adjust != nil {
		adjust(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := broker.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open store on %s: %v", where, err)
	}
	return st
}

// Kill cuts every connection of node i, then shuts it down: to its clients and peers it
// dies as in a crash. Safe to call twice.
func (c *Cluster) Kill(i int) {
	c.clients[i].Close()
	for j := range c.Nodes {
		if j != i {
			c.routes[i][j].Close()
			c.routes[j][i].Close()
		}
	}
	c.Nodes[i].Shutdown()
	c.Nodes[i].WaitForShutdown()
}

// StreamLeader is the index of the node leading stream (in the default account), waiting
// for one to be elected.
func (c *Cluster) StreamLeader(stream string) int {
	c.t.Helper()
	leader := -1
	c.waitFor(30*time.Second, "a leader of stream "+stream, func() bool {
		for i, ns := range c.Nodes {
			if ns.Running() && ns.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, stream) {
				leader = i
				return true
			}
		}
		return false
	})
	return leader
}

// MapSubject sends percent of the messages clients publish on src (in the default
// account) to dest instead, the rest on to src, on every node: a weighted subject mapping,
// which a node applies to its own clients' messages. A test has a responder on dest stand
// for the servers on part of their requests (a replica behind its leader, say) without
// racing them: which requests it gets is the nodes' draw, however loaded the machine.
func (c *Cluster) MapSubject(t testing.TB, src, dest string, percent uint8) {
	t.Helper()
	for i, ns := range c.Nodes {
		acc := ns.GlobalAccount()
		if acc == nil {
			t.Fatalf("cluster node %d: no default account", i+1)
		}
		if err := acc.AddWeightedMappings(src, server.NewMapDest(dest, percent)); err != nil {
			t.Fatalf("cluster node %d: map %s to %s: %v", i+1, src, dest, err)
		}
	}
}

// UnmapSubject removes MapSubject's mapping of src on every node: the clients' messages on
// src go to src again.
func (c *Cluster) UnmapSubject(t testing.TB, src string) {
	t.Helper()
	for i, ns := range c.Nodes {
		acc := ns.GlobalAccount()
		if acc == nil || !acc.RemoveMapping(src) {
			t.Fatalf("cluster node %d: no mapping of %s to remove", i+1, src)
		}
	}
}

func (c *Cluster) waitFor(limit time.Duration, what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster: no %s within %s", what, limit)
		}
		time.Sleep(20 * time.Millisecond) // polling the servers' state, with a deadline
	}
}

// URL is the client URL of node i alone: a client that must stay on that node.
func (c *Cluster) URL(i int) string { return "nats://" + c.clients[i].Addr() }

// OpenOn opens a store with 3 replicas on a new connection to node i alone.
func (c *Cluster) OpenOn(t testing.TB, i int, adjust func(*broker.Config)) *broker.Store {
	t.Helper()
	nc, err := nats.Connect(c.URL(i), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect to cluster node %d: %v", i+1, err)
	}
	t.Cleanup(nc.Close)
	return openStore(t, nc, adjust, fmt.Sprintf("cluster node %d", i+1))
}

// CutRoute cuts the route between nodes i and j, both ways, and keeps it cut until
// HealRoute: neither learns the other's subscriptions meanwhile, so a message published
// on one for a client of the other is dropped there. The other routes stay up.
func (c *Cluster) CutRoute(i, j int) {
	c.t.Helper()
	c.routes[i][j].Pause()
	c.routes[j][i].Pause()
	c.waitFor(30*time.Second, fmt.Sprintf("cut of the route between nodes %d and %d", i+1, j+1), func() bool {
		return !c.routed(i, j) && !c.routed(j, i)
	})
}

// HealRoute lets the route between nodes i and j connect again after CutRoute.
func (c *Cluster) HealRoute(i, j int) {
	c.t.Helper()
	c.routes[i][j].Resume()
	c.routes[j][i].Resume()
	c.waitFor(30*time.Second, fmt.Sprintf("route between nodes %d and %d", i+1, j+1), func() bool {
		return c.routed(i, j) && c.routed(j, i)
	})
}

// routed reports whether node i has a route to node j.
func (c *Cluster) routed(i, j int) bool {
	rz, err := c.Nodes[i].Routez(nil)
	if err != nil {
		return false
	}
	for _, r := range rz.Routes {
		if r.RemoteName == c.Nodes[j].Name() {
			return true
		}
	}
	return false
}

// LeadTo moves the leadership of every stream and consumer of the default account to
// node i, and waits until node i leads them all: a test that cuts a route between the
// other two nodes keeps a job's JetStream reads and writes within reach of both.
func (c *Cluster) LeadTo(t testing.TB, i int) {
	t.Helper()
	nc, err := nats.Connect(c.URL(i), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect to cluster node %d: %v", i+1, err)
	}
	defer nc.Close()
	ns := c.Nodes[i]
	body := fmt.Appendf(nil, `{"placement":{"preferred":%q}}`, ns.Name())
	// Asked again only after an election had time to end: a stepdown asked while one runs
	// would start another.
	stepdown := func(subject string, leads func() bool) {
		deadline := time.Now().Add(60 * time.Second)
		for !leads() {
			if time.Now().After(deadline) {
				t.Fatalf("cluster: no leader %s for %s within 60s", ns.Name(), subject)
			}
			_, _ = nc.Request(subject, body, 5*time.Second)
			asked := time.Now()
			for !leads() && time.Since(asked) < 5*time.Second {
				time.Sleep(20 * time.Millisecond) // polling the servers' state, with a deadline
			}
		}
	}
	// The meta leader stays where it is: the streams' and consumers' own leaders serve
	// the reads and writes of a running job.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	streams := js.StreamNames(ctx)
	for name := range streams.Name() {
		stepdown("$JS.API.STREAM.LEADER.STEPDOWN."+name, func() bool {
			return ns.JetStreamIsStreamLeader(server.DEFAULT_GLOBAL_ACCOUNT, name)
		})
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		consumers := st.ConsumerNames(ctx)
		for cons := range consumers.Name() {
			stepdown("$JS.API.CONSUMER.LEADER.STEPDOWN."+name+"."+cons, func() bool {
				return ns.JetStreamIsConsumerLeader(server.DEFAULT_GLOBAL_ACCOUNT, name, cons)
			})
		}
		if err := consumers.Err(); err != nil {
			t.Fatalf("consumers of %s: %v", name, err)
		}
	}
	if err := streams.Err(); err != nil {
		t.Fatalf("streams: %v", err)
	}
}
