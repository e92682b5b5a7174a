package app

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and returns it as a TLS
// config for the server and the path of its PEM file (the CA a client trusts).
func selfSigned(t *testing.T) (*tls.Config, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreman test NATS"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}, ca
}

// natsServer runs a JetStream nats-server on loopback with opts adjusted by the test.
func natsServer(t *testing.T, adjust func(*server.Options)) *server.Server {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true}
	adjust(opts)
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startWith starts foreman on an external NATS with cfg's login settings.
func startWith(t *testing.T, cfg Config) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg.Addr, cfg.NATSReplicas = "127.0.0.1:0", 1
	a, err := Start(ctx, cfg, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(ctx)
	}
	return err
}

// An nkey seed file logs in to a TLS listener whose certificate FOREMAN_NATS_CA trusts.
func TestNATSLoginNkeySeedAndCA(t *testing.T) {
	t.Parallel()
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	tlsConf, ca := selfSigned(t)
	ns := natsServer(t, func(o *server.Options) {
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
		o.TLSConfig, o.TLS = tlsConf, true
	})
	url := strings.Replace(ns.ClientURL(), "nats://", "tls://", 1)
	seedFile := writeFile(t, "user.nk", seed)
	if err := startWith(t, Config{NATSURL: url, NATSNkeySeed: seedFile, NATSCA: ca}); err != nil {
		t.Fatalf("nkey seed and CA: %v", err)
	}
	if err := startWith(t, Config{NATSURL: url, NATSNkeySeed: seedFile}); err == nil {
		t.Error("started without the CA of a self-signed certificate")
	}
	if err := startWith(t, Config{NATSURL: url, NATSCA: ca}); err == nil || !strings.Contains(err.Error(), "FOREMAN_NATS_URL") {
		t.Errorf("without the seed: %v, want a refused login naming FOREMAN_NATS_URL", err)
	}
}

// A .creds file (user JWT and seed) logs in to a server in operator mode.
func TestNATSLoginCreds(t *testing.T) {
	t.Parallel()
	okp, _ := nkeys.CreateOperator()
	opub, _ := okp.PublicKey()
	oc := jwt.NewOperatorClaims(opub)
	ojwt, err := oc.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	akp, _ := nkeys.CreateAccount()
	apub, _ := akp.PublicKey()
	ac := jwt.NewAccountClaims(apub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	ajwt, err := ac.Encode(okp)
	if err != nil {
		t.Fatal(err)
	}
	ukp, _ := nkeys.CreateUser()
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.IssuerAccount = apub
	ujwt, err := uc.Encode(akp)
	if err != nil {
		t.Fatal(err)
	}
	useed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	if err != nil {
		t.Fatal(err)
	}
	ns := natsServer(t, func(o *server.Options) {
		o.JetStream = false // JetStream in operator mode wants a system account; the login is what is tested
		op, err := jwt.DecodeOperatorClaims(ojwt)
		if err != nil {
			t.Fatal(err)
		}
		o.TrustedOperators = []*jwt.OperatorClaims{op}
		r := &server.MemAccResolver{}
		_ = r.Store(apub, ajwt)
		o.AccountResolver = r
	})
	credsFile := writeFile(t, "foreman.creds", creds)
	connect := func(cfg Config) error {
		cfg.NATSURL = ns.ClientURL()
		opts, err := natsOptions(cfg)
		if err != nil {
			return err
		}
		nc, err := connectNATS(context.Background(), cfg.NATSURL, opts, slog.New(slog.DiscardHandler))
		if err == nil {
			nc.Close()
		}
		return err
	}
	if err := connect(Config{NATSCreds: credsFile}); err != nil {
		t.Fatalf("creds: %v", err)
	}
	if err := connect(Config{}); err == nil {
		t.Error("connected without credentials to a server that requires them")
	}
}

// The login settings need FOREMAN_NATS_URL; creds and a seed exclude each other.
func TestNATSLoginSettingsChecked(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{NATSCreds: "x.creds"}, "FOREMAN_NATS_CREDS=\"x.creds\" needs FOREMAN_NATS_URL"},
		{Config{NATSNkeySeed: "x.nk"}, "FOREMAN_NATS_NKEY_SEED=\"x.nk\" needs FOREMAN_NATS_URL"},
		{Config{NATSCA: "ca.pem"}, "FOREMAN_NATS_CA=\"ca.pem\" needs FOREMAN_NATS_URL"},
		{Config{NATSURL: "nats://h:4222", NATSCreds: "x", NATSNkeySeed: "y"}, "exclude each other"},
		{Config{NATSURL: "nats://h:4222", NATSCreds: "x", NATSCA: "y"}, ""},
	} {
		err := CheckNATSLogin(c.cfg)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

// The listener's settings need FOREMAN_NATS_LISTEN; Start refuses them as serve does.
func TestNATSListenerSettingsChecked(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{NATSUser: "u", NATSPassword: "p"}, ""}, // the CLI's login too
		{Config{NATSTLSKey: "k.pem"}, "FOREMAN_NATS_TLS_KEY needs FOREMAN_NATS_LISTEN"},
		{Config{NATSURL: "nats://h:4222", NATSNkey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}, "use FOREMAN_NATS_NKEY_SEED"},
		{Config{NATSListen: "127.0.0.1:0", NATSUser: "u", NATSPassword: "p", NATSTLSCert: "c", NATSTLSKey: "k"}, ""},
		{Config{NATSURL: "nats://h:4222"}, ""},
	} {
		err := CheckNATSListener(c.cfg)
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", DataDir: t.TempDir(), NATSNkey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(ctx)
	}
	if err == nil || !strings.Contains(err.Error(), "FOREMAN_NATS_NKEY needs FOREMAN_NATS_LISTEN") {
		t.Errorf("Start with an nkey and no listener: %v", err)
	}
}

// logSignal is a slog handler that reports each record's message on a channel.
type logSignal struct{ msgs chan string }

func (h logSignal) Enabled(context.Context, slog.Level) bool { return true }
func (h logSignal) Handle(_ context.Context, r slog.Record) error {
	select {
	case h.msgs <- r.Message:
	default:
	}
	return nil
}
func (h logSignal) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logSignal) WithGroup(string) slog.Handler      { return h }

// A foreman started before its NATS answers waits for it, saying so, instead of exiting.
func TestStartWaitsForNATS(t *testing.T) {
	t.Parallel()
	// The port is held until the NATS server takes it: freed while the start waits, a
	// listener of another test could take it and answer the foreman in NATS's place, or
	// make the server's own listen fail.
	addr, free := ollamatest.ReserveAddr(t)
	t.Cleanup(free)
	port, err := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:])
	if err != nil {
		t.Fatal(err)
	}
	logs := logSignal{msgs: make(chan string, 64)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	started := make(chan error, 1)
	var a *App
	go func() {
		var err error
		a, err = Start(ctx, Config{Addr: "127.0.0.1:0", NATSURL: "nats://127.0.0.1:" + strconv.Itoa(port), NATSReplicas: 1}, slog.New(logs))
		started <- err
	}()
	for waiting := false; !waiting; {
		select {
		case msg := <-logs.msgs:
			waiting = strings.HasPrefix(msg, "waiting for the NATS cluster")
		case err := <-started:
			t.Fatalf("start returned before NATS was up, without waiting for it: %v", err)
		}
	}
	free()
	natsServer(t, func(o *server.Options) { o.Port = port })
	if err := <-started; err != nil {
		t.Fatalf("start once NATS is up: %v", err)
	}
	_ = a.Shutdown(ctx)
}

// A user the NATS server denies the JetStream API (another foreman's client user, say)
// made the start wait for the cluster for ever: the refusal comes apart from the request,
// which only times out. The start ends with it, saying what foreman's user needs.
func TestNATSUserWithoutJetStreamIsRefusedAtStart(t *testing.T) {
	t.Parallel()
	ns := natsServer(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "watcher", Password: "pw", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{"foreman.jobs.submit"}},
			Subscribe: &server.SubjectPermission{Allow: []string{"foreman.job.>", "_INBOX.>"}},
		}}}
	})
	url := strings.Replace(ns.ClientURL(), "nats://", "nats://watcher:pw@", 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a, err := Start(ctx, Config{Addr: "127.0.0.1:0", NATSURL: url, NATSReplicas: 1}, slog.New(slog.DiscardHandler))
	if err == nil {
		_ = a.Shutdown(ctx)
		t.Fatal("started with a user the server denies JetStream")
	}
	if ctx.Err() != nil {
		t.Fatalf("the start waited for the cluster until the test's deadline: %v", err)
	}
	if !strings.Contains(err.Error(), "refused foreman's user") || !strings.Contains(err.Error(), "ermissions violation") {
		t.Fatalf("err %v: want the server's refusal named", err)
	}
	if strings.Contains(err.Error(), "pw@") {
		t.Fatalf("err %v shows the password", err)
	}
}
