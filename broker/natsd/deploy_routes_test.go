package natsd_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The shipped file's CLIENTS account has the embedded server's limits.
func TestShippedClusterClientLimits(t *testing.T) {
	t.Parallel()
	sc := startShippedCluster(t)
	wantClientLimits(t, sc.url, sc.clientUser, sc.clientPass, true)
}

// TestShippedClusterRoutes starts three nodes from deploy/nats-cluster.conf, its cluster
// block kept (ports moved to loopback), and a server that knows nothing but n1's route
// port: the nodes form the cluster, the stranger is refused, and what it publishes into
// foreman's job bucket is not stored.
func TestShippedClusterRoutes(t *testing.T) {
	t.Parallel()
	refused := &routeAuthLog{}
	ports := map[string]int{"n1": freePort(t), "n2": freePort(t), "n3": freePort(t)}
	n1 := startShippedNode(t, "n1", ports, refused)
	n2 := startShippedNode(t, "n2", ports, nil)
	n3 := startShippedNode(t, "n3", ports, nil)
	nodes := []*server.Server{n1, n2, n3}
	eventually(t, 30*time.Second, "the three nodes routed to each other", func() bool {
		for _, n := range nodes {
			if n.NumRemotes() != 2 {
				return false
			}
		}
		return true
	})
	// A leader that has not yet heard each node's JetStream stats places no stream of
	// three replicas ("no suitable peers for placement"): it must know all three.
	eventually(t, 30*time.Second, "a JetStream meta leader that knows the three nodes", func() bool {
		for _, n := range nodes {
			if n.JetStreamIsLeader() && len(n.JetStreamClusterPeers()) == len(nodes) {
				return true
			}
		}
		return false
	})

	// foreman's job bucket, written through n3: its route carries foreman's traffic.
	ctx := ctxT(t)
	nc, err := nats.Connect(n3.ClientURL(), nats.UserInfo("foreman", shippedPassword(t, "foreman")), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: broker.JobsBucket, Replicas: 3})
	if err != nil {
		t.Fatalf("job bucket on the cluster: %v", err)
	}
	if _, err := kv.Put(ctx, "job.real", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	// A stranger's server: its own FOREMAN account and user, a route to n1 and no login.
	opts := &server.Options{}
	if err := opts.ProcessConfigString(`accounts { FOREMAN { users: [{user: rogue, password: rogue}] } }`); err != nil {
		t.Fatal(err)
	}
	opts.ServerName, opts.Host, opts.Port, opts.NoSigs = "rogue", "127.0.0.1", server.RANDOM_PORT, true
	opts.Cluster = server.ClusterOpts{Name: n1.ClusterName(), Host: "127.0.0.1", Port: server.RANDOM_PORT}
	opts.Routes = []*url.URL{{Scheme: "nats", Host: n1.ClusterAddr().String()}}
	rogue := startServer(t, opts, nil)
	// The stranger counts n1 a remote from its route's first INFO until n1's refusal
	// closes it: its count is looked at once n1 has said so.
	eventually(t, 30*time.Second, "n1 to refuse the stranger's route", func() bool { return refused.n.Load() > 0 })
	eventually(t, 10*time.Second, "the stranger routed to no node", func() bool { return rogue.NumRemotes() == 0 })
	if n := n1.NumRemotes(); n != 2 {
		t.Errorf("n1 routes to %d servers, want its 2 peers", n)
	}
	rc, err := nats.Connect(rogue.ClientURL(), nats.UserInfo("rogue", "rogue"), nats.Timeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	if ack, err := rc.Request("$KV."+broker.JobsBucket+".job.forged", []byte(`{"state":"done"}`), 2*time.Second); err == nil {
		t.Errorf("the stranger's write into the job bucket was answered: %s", ack.Data)
	}
	if e, err := kv.Get(ctx, "job.forged"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("job.forged in the bucket: %v (%v)", e, err)
	}
}

// startShippedNode starts node name from the shipped file with its cluster block, on
// loopback: its route port is ports[name], and its routes are the file's, logins and all,
// each led to ports[the host it names]. log, if not nil, gets the server's log lines.
func startShippedNode(t *testing.T, name string, ports map[string]int, log server.Logger) *server.Server {
	t.Helper()
	opts, err := server.ProcessConfigFile(shippedClusterConf)
	if err != nil {
		t.Fatalf("load %s: %v", shippedClusterConf, err)
	}
	opts.ServerName = name
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.StoreDir = t.TempDir()
	opts.JetStreamMaxStore = 1 << 30
	opts.Cluster.Host, opts.Cluster.Port = "127.0.0.1", ports[name]
	for i, r := range opts.Routes {
		port, ok := ports[r.Hostname()]
		if !ok {
			t.Fatalf("the shipped config routes to %s, not one of %v", r.Host, ports)
		}
		u := *r
		u.Host = fmt.Sprintf("127.0.0.1:%d", port)
		opts.Routes[i] = &u
	}
	opts.RoutesStr = ""
	opts.NoSigs = true
	return startServer(t, opts, log)
}

// startServer starts a server from opts, stopped when the test ends.
func startServer(t *testing.T, opts *server.Options, log server.Logger) *server.Server {
	t.Helper()
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("server %s: %v", opts.ServerName, err)
	}
	if log != nil {
		ns.SetLoggerV2(log, false, false, false)
	}
	ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatalf("server %s not ready", opts.ServerName)
	}
	return ns
}

// shippedPassword is the password of user in the shipped file.
func shippedPassword(t *testing.T, user string) string {
	t.Helper()
	opts, err := server.ProcessConfigFile(shippedClusterConf)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range opts.Users {
		if u.Username == user {
			return u.Password
		}
	}
	t.Fatalf("no user %s in %s", user, shippedClusterConf)
	return ""
}

// routeAuthLog is a server log that counts routes refused for their login.
type routeAuthLog struct{ n atomic.Int64 }

func (l *routeAuthLog) Errorf(format string, v ...any) {
	if msg := fmt.Sprintf(format, v...); strings.Contains(msg, "rid:") && strings.Contains(msg, server.ErrAuthentication.Error()) {
		l.n.Add(1)
	}
}
func (l *routeAuthLog) Noticef(string, ...any) {}
func (l *routeAuthLog) Warnf(string, ...any)   {}
func (l *routeAuthLog) Fatalf(string, ...any)  {}
func (l *routeAuthLog) Debugf(string, ...any)  {}
func (l *routeAuthLog) Tracef(string, ...any)  {}

// eventually polls cond until it holds, failing the test after within.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(within)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("waited %s for %s", within, what)
		}
	}
}

// freePort is a loopback TCP port nobody listened on a moment ago: route ports must be
// known before the servers start, as each names the others'. It lies below the ephemeral
// ranges of Linux (32768 on) and macOS (49152 on), so that a port asked for with ":0" by
// a test running alongside cannot take it first (as brokertest's cluster does).
func freePort(t *testing.T) int {
	t.Helper()
	for port := 20000 + rand.IntN(10000); port < 32000; port++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}
