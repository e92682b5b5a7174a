package natsd_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// What nats-server would exit the process on (its fatal log lines) ends Start with that
// error, naming the setting behind it, instead of a wait for a server that never gets
// ready.
func TestStartReturnsTheServersFatalError(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { taken.Close() })
	notDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(notDir, "jetstream"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  natsd.Config
		want []string
	}{
		{"listener port in use", natsd.Config{
			DataDir: t.TempDir(), Listen: taken.Addr().String(), ClientUser: "watcher", ClientPassword: "s3cret",
		}, []string{"FOREMAN_NATS_LISTEN=" + `"` + taken.Addr().String() + `"`, "address already in use"}},
		{"a file named jetstream in the data dir", natsd.Config{DataDir: notDir},
			[]string{`FOREMAN_DATA_DIR="` + notDir + `"`, "Can't start JetStream", "not a directory"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			srv, err := natsd.Start(c.cfg)
			if err == nil {
				srv.Shutdown()
				t.Fatal("started")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// The data directory was let go: a start that can work takes it.
			if c.cfg.Listen != "" {
				cfg := c.cfg
				cfg.Listen = "127.0.0.1:0"
				srv, err := natsd.Start(cfg)
				if err != nil {
					t.Fatalf("start on the same data dir with a free port: %v", err)
				}
				srv.Shutdown()
			}
		})
	}
}

// A configuration Start cannot honour safely is refused before anything starts, with an
// error naming the setting: above all a listener that would let a client in without
// both halves of a login.
func TestStartRefusesBadConfig(t *testing.T) {
	t.Parallel()
	listen := func(c natsd.Config) natsd.Config {
		c.DataDir, c.Listen = t.TempDir(), "127.0.0.1:0"
		return c
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	nkey, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  natsd.Config
		want string
	}{
		{"no data dir", natsd.Config{}, "DataDir is required"},
		{"listen not host:port", natsd.Config{DataDir: t.TempDir(), Listen: "127.0.0.1", ClientUser: "watcher", ClientPassword: "s3cret"}, "not host:port"},
		{"user without password", listen(natsd.Config{ClientUser: "watcher"}), "must be set together"},
		{"password without user", listen(natsd.Config{ClientPassword: "s3cret"}), "must be set together"},
		{"user without password beside an nkey", listen(natsd.Config{ClientUser: "watcher", ClientNkey: nkey}), "must be set together"},
		{"listener without a login", listen(natsd.Config{}), "needs FOREMAN_NATS_USER"},
		{"foreman's own user name", listen(natsd.Config{ClientUser: "foreman", ClientPassword: "s3cret"}), "reserved"},
		{"TLS cert without key", natsd.Config{DataDir: t.TempDir(), TLSCert: "cert.pem"}, "must be set together"},
		{"TLS key without cert", natsd.Config{DataDir: t.TempDir(), TLSKey: "key.pem"}, "must be set together"},
	} {
		srv, err := natsd.Start(c.cfg)
		if err == nil {
			srv.Shutdown()
			t.Errorf("%s: started", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
