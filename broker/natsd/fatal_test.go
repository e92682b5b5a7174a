package natsd_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
