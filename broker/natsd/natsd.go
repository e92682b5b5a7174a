// Package natsd runs foreman's embedded nats-server: JetStream on a locked store directory,
// an in-process connection for foreman itself, and an optional TCP listener for NATS clients
// with real users and permissions. It is the only package that imports nats-server.
package natsd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/bcrypt"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// internalUser is the name of foreman's own in-process user. It can never log in over TCP.
const internalUser = "foreman"

// Config describes the embedded server.
type Config struct {
	// DataDir holds the JetStream store and the lock file. Required.
	DataDir string
	// Listen is host:port for NATS clients; empty means no TCP listener at all.
	// Port 0 or -1 picks a free port (tests).
	Listen string
	// ClientUser and ClientPassword are the client user on the listener; ClientNkey, a
	// public user nkey ("U…"), is another way in (or the only one). Listen needs one.
	ClientUser     string
	ClientPassword string
	ClientNkey     string
	// TLSCert and TLSKey enable TLS on the listener.
	TLSCert string
	TLSKey  string
	// MaxStore caps JetStream file storage in bytes; 0 sets it at start to what the store
	// holds plus 75 % of the disk space then free (storeLimit).
	MaxStore int64
	// MaxPayload caps a message in bytes; 0 keeps the server's default, 1 MiB. Tests set
	// it small, as an external NATS may.
	MaxPayload int32
	// ReadyTimeout bounds start-up; default 10s.
	ReadyTimeout time.Duration
	Logger       *slog.Logger
}

// ErrLocked is returned when another foreman holds the data directory.
var ErrLocked = errors.New("data directory is in use by another foreman")

// ErrDataDir is (wrapped in) the error of a start that could not create the data
// directory or its lock file: a path that cannot be one, a read-only file system, no
// permission.
var ErrDataDir = errors.New("the data directory cannot be used")

// ErrDataDirUnchecked is (wrapped in) a DataDirError that could not look at the data
// directory (a stat that failed for another reason than its absence): the directory may
// well be in place, and a later look may find it so.
var ErrDataDirUnchecked = errors.New("cannot be checked")

// Server is a running embedded nats-server.
type Server struct {
	ns       *server.Server
	lock     *os.File
	secret   string
	log      *slog.Logger
	stopOnce sync.Once
	// lockPath is the data directory's lock file, lockHeld the file this process locked
	// there (DataDirError).
	lockPath string
	lockHeld os.FileInfo
	// readyTimeout bounds an in-process connect's handshake as it bounds start-up: on a
	// busy machine the server's first answer may take longer than nats.go's 2 s default,
	// and no network is in between to fail instead.
	readyTimeout time.Duration
	// conns hands Connect its in-process connections: the server itself, or in tests a
	// provider that can misbehave.
	conns nats.InProcessConnProvider

	// unrecovered is when Healthy first saw each "could not be recovered" error, which a
	// stream being created shows for a moment (its directory is there before it is).
	healthMu    sync.Mutex
	unrecovered map[string]time.Time
	// healthz is nats-server's Healthz; tests may stand in for its next answer.
	healthz func(*server.HealthzOptions) *server.HealthStatus
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("natsd: DataDir is required")
	}
	if c.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Listen); err != nil {
			return fmt.Errorf("FOREMAN_NATS_LISTEN=%q: not host:port", c.Listen)
		}
		password := c.ClientUser != "" || c.ClientPassword != ""
		if password && (c.ClientUser == "" || c.ClientPassword == "") {
			return errors.New("FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD must be set together")
		}
		if !password && c.ClientNkey == "" {
			return fmt.Errorf("FOREMAN_NATS_LISTEN=%q: a NATS listener needs FOREMAN_NATS_USER and FOREMAN_NATS_PASSWORD, or FOREMAN_NATS_NKEY", c.Listen)
		}
		if c.ClientNkey != "" && !nkeys.IsValidPublicUserKey(c.ClientNkey) {
			return fmt.Errorf("FOREMAN_NATS_NKEY=%q: not a public user nkey (U…)", c.ClientNkey)
		}
		if c.ClientUser == internalUser {
			return fmt.Errorf("FOREMAN_NATS_USER=%q: that name is reserved for foreman itself", c.ClientUser)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("FOREMAN_NATS_TLS_CERT and FOREMAN_NATS_TLS_KEY must be set together")
	}
	return nil
}

// Start locks cfg.DataDir, starts the server and waits until it accepts connections.
func Start(cfg Config) (*Server, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	warnCleartext(cfg)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("natsd: %w: %w", ErrDataDir, err)
	}
	storeGone := storeMissing(cfg.DataDir)
	lock, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	if storeGone {
		cfg.Logger.Error("data directory damaged: foreman ran in it before (its lock file is there) but its JetStream store (jetstream/) is missing, "+
			"removed or never made: whatever jobs it held are gone; starting with an empty store", "data_dir", cfg.DataDir)
	}
	held, err := lock.Stat()
	if err != nil {
		unlockFile(lock)
		lock.Close()
		return nil, fmt.Errorf("natsd: %w: lock file: %w", ErrDataDir, err)
	}
	s := &Server{lock: lock, lockPath: lock.Name(), lockHeld: held, secret: randomSecret(), log: cfg.Logger, readyTimeout: cfg.ReadyTimeout}
	opts, err := s.options(cfg)
	if err != nil {
		s.unlock()
		return nil, err
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		s.unlock()
		return nil, fmt.Errorf("natsd: %w", err)
	}
	logs := newLogAdapter(cfg.Logger)
	ns.SetLoggerV2(logs, false, false, false)
	ns.Start()
	if err := waitReady(ns, logs, cfg); err != nil {
		ns.Shutdown()
		ns.WaitForShutdown()
		s.unlock()
		return nil, err
	}
	s.ns = ns
	s.conns = ns
	return s, nil
}

// waitReady waits until ns accepts connections, for up to cfg.ReadyTimeout, or until it
// logs a fatal error, which it returns naming the setting behind it where there is one.
func waitReady(ns *server.Server, logs *logAdapter, cfg Config) error {
	deadline := time.Now().Add(cfg.ReadyTimeout)
	for {
		ready := ns.ReadyForConnections(readyPoll)
		if f := logs.fatalLine(); f != nil {
			return f.err(cfg)
		}
		if ready {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("natsd: server not ready after %s", cfg.ReadyTimeout)
		}
	}
}

// readyPoll is how long waitReady waits for the server at a time before it looks for a
// fatal error again.
const readyPoll = 50 * time.Millisecond

// err is the error of a fatal line, naming the setting behind the listener or the store
// directory when it is about one of them.
func (f *fatalLine) err(cfg Config) error {
	switch {
	case strings.HasPrefix(f.format, "Error listening on port"):
		return fmt.Errorf("FOREMAN_NATS_LISTEN=%q: nats-server: %s", cfg.Listen, f.msg)
	case strings.HasPrefix(f.format, "Can't start JetStream"):
		return fmt.Errorf("FOREMAN_DATA_DIR=%q: nats-server: %s", cfg.DataDir, f.msg)
	}
	return fmt.Errorf("natsd: nats-server: %s", f.msg)
}

func (s *Server) options(cfg Config) (*server.Options, error) {
	opts := &server.Options{}
	// Accounts, users, exports and imports are easiest to state as config text; every
	// value placed in it is a bcrypt hash or a name checked against userName.
	conf, err := s.accountsConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := opts.ProcessConfigString(conf); err != nil {
		return nil, fmt.Errorf("natsd: accounts: %w", err)
	}
	opts.ServerName = "foreman"
	opts.JetStream = true
	opts.StoreDir = cfg.DataDir
	opts.JetStreamMaxStore = cfg.MaxStore
	if cfg.MaxStore == 0 {
		opts.JetStreamMaxStore = storeLimit(cfg.DataDir)
	}
	opts.MaxPayload = cfg.MaxPayload
	opts.SyncAlways = true // an acknowledged job is on disk
	opts.NoSigs = true     // else the server os.Exit()s on SIGTERM
	opts.DontListen = cfg.Listen == ""
	// The monitoring port stays closed; foreman has its own /healthz.
	if cfg.Listen == "" {
		return opts, nil
	}
	host, portStr, _ := net.SplitHostPort(cfg.Listen)
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("FOREMAN_NATS_LISTEN=%q: bad port", cfg.Listen)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts.Host, opts.Port = host, port
	opts.MaxConn = listenerMaxConns
	if cfg.TLSCert != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey})
		if err != nil {
			return nil, fmt.Errorf("natsd: TLS: %w", err)
		}
		opts.TLSConfig, opts.TLS = tc, true
	}
	return opts, nil
}

// warnCleartext warns of a listener others can reach that has no TLS: its logins and every
// job event (prompts and answers) cross the network in clear, a password included. An
// nkey login sends no secret, but what the client then reads still travels in clear.
func warnCleartext(cfg Config) {
	if cfg.Listen == "" || cfg.TLSCert != "" || LoopbackAddr(cfg.Listen) {
		return
	}
	what := "every job's prompts and answers"
	if cfg.ClientPassword != "" {
		what = "FOREMAN_NATS_PASSWORD and " + what
	}
	cfg.Logger.Warn("INSECURE: the NATS listener FOREMAN_NATS_LISTEN=" + cfg.Listen +
		" is not loopback and has no TLS (FOREMAN_NATS_TLS_CERT / FOREMAN_NATS_TLS_KEY): " +
		what + " cross the network in clear")
}

// LoopbackAddr reports whether host:port listens on loopback only: a loopback IP or
// "localhost". An empty host, 0.0.0.0 or any other name may be reachable from elsewhere.
// The HTTP listener is judged by it too (app.LoopbackAddr).
func LoopbackAddr(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Account names. foreman's own streams, KV and inbox traffic live in FOREMAN; NATS
// clients live in CLIENTS and see only what FOREMAN exports: the job events and streams
// (a stream export) and submission (a service export, whose replies the server routes
// back itself). A client can therefore neither read foreman's internal traffic nor,
// by forging a reply subject, make foreman publish into its own subjects.
const (
	foremanAccount = "FOREMAN"
	clientsAccount = "CLIENTS"
)

// Limits of the CLIENTS account. Every subscription that matches a job event is a copy
// the server makes as the event is stored, and the job's write waits for it: one client
// with 20,000 subscriptions to foreman.job.> made each submit take 113 ms. A client waits
// on a job with one subscription, so a connection needs about one per job it watches at
// once (FOREMAN_MAX_QUEUE, 1000, bounds those) and one for its requests.
const (
	clientMaxConns = 64
	clientMaxSubs  = 1000
)

// listenerMaxConns caps the server's connections at once when it listens, in-process
// ones and those still logging in included (ADR-0093): nats-server's default, 65,536,
// is more file descriptors than foreman may have, and a connection that never logs in is
// held for its whole login time (2 s), so one process opening connections in a loop held
// 17,000 of them. It leaves the CLIENTS account's connections and foreman's own many
// times over for logins in progress. A var for tests.
var listenerMaxConns = 1024

var userName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$`)

func (s *Server) accountsConfig(cfg Config) (string, error) {
	// The hashes never leave memory (the passwords themselves are in the environment or
	// random), so a high cost buys nothing; it costs every login, and at DefaultCost a
	// loaded machine takes longer than the server's first PING, failing the handshake.
	internalHash, err := bcrypt.GenerateFromPassword([]byte(s.secret), bcrypt.MinCost)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, `accounts {
  %s {
    jetstream: enabled
    users: [ {user: %q, password: %q, allowed_connection_types: ["IN_PROCESS"]} ]
    exports: [ {stream: %q}, {service: %q} ]
  }
`, foremanAccount, internalUser, internalHash, broker.JobSubjects, broker.SubmitSubject)
	if cfg.Listen != "" {
		perms := fmt.Sprintf(`allowed_connection_types: ["STANDARD", "WEBSOCKET"],
      permissions: {publish: {allow: [%q]}, subscribe: {allow: [%q, "_INBOX.>"]}}`, broker.SubmitSubject, broker.JobSubjects)
		var users []string
		if cfg.ClientUser != "" {
			if !userName.MatchString(cfg.ClientUser) {
				return "", fmt.Errorf("FOREMAN_NATS_USER=%q: use letters, digits and _ . @ - (at most 64)", cfg.ClientUser)
			}
			clientHash, err := bcrypt.GenerateFromPassword([]byte(cfg.ClientPassword), bcrypt.MinCost)
			if err != nil {
				return "", fmt.Errorf("natsd: client password: %w", err)
			}
			users = append(users, fmt.Sprintf("{user: %q, password: %q, %s}", cfg.ClientUser, clientHash, perms))
		}
		if cfg.ClientNkey != "" { // validated: base32 letters and digits only
			users = append(users, fmt.Sprintf("{nkey: %q, %s}", cfg.ClientNkey, perms))
		}
		fmt.Fprintf(&b, `  %s {
    users: [ %s ]
    limits: {max_connections: %d, max_subscriptions: %d}
    imports: [ {stream: {account: %s, subject: %q}}, {service: {account: %s, subject: %q}} ]
  }
`, clientsAccount, strings.Join(users, ", "), clientMaxConns, clientMaxSubs, foremanAccount, broker.JobSubjects, foremanAccount, broker.SubmitSubject)
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// Connect opens an in-process connection as foreman's internal user.
//
// The server sends a client its first PING a moment after the connection opens (2 s) to
// measure its round trip; on a machine so busy that the server takes longer than that to
// answer the CONNECT, that PING comes before the PONG that ends the handshake, and
// nats.go gives up on the connection ("expected 'PONG', got 'PING'", nats-server #1174).
// Nothing is wrong with the server then: Connect tries again, a few times.
//
// The connection's asynchronous errors (a subscription that fell behind and lost
// messages: a slow reader of a streamed answer) go to the server's logger, as a warning:
// nats.go's own handler would print them to stderr as bare lines among foreman's log.
// An ErrorHandler in opts replaces it.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	all := append([]nats.Option{
		nats.InProcessServer(s.conns),
		nats.Timeout(s.readyTimeout),
		nats.UserInfo(internalUser, s.secret),
		nats.Name("foreman"),
		nats.ErrorHandler(s.asyncError),
	}, opts...)
	var err error
	for range connectTries {
		var nc *nats.Conn
		nc, err = nats.Connect("", all...)
		if err == nil {
			return nc, nil
		}
		if !pingBeforePong(err) {
			break
		}
		s.log.Warn("in-process NATS connection: the server pinged before it answered; trying again", "err", err)
	}
	return nil, fmt.Errorf("natsd: in-process connect: %w", err)
}

// asyncError logs an asynchronous error of an in-process connection (Connect).
func (s *Server) asyncError(_ *nats.Conn, sub *nats.Subscription, err error) {
	if sub != nil {
		s.log.Warn("in-process NATS connection", "err", err, "subject", sub.Subject)
		return
	}
	s.log.Warn("in-process NATS connection", "err", err)
}

// connectTries bounds Connect's tries.
const connectTries = 3

// pingBeforePong reports whether err is nats.go's refusal of a PING in the handshake.
func pingBeforePong(err error) bool {
	return strings.Contains(err.Error(), "expected 'PONG', got 'PING'")
}

// ClientURL is the nats:// (or tls://) URL of the TCP listener, or "" when there is none.
func (s *Server) ClientURL() string {
	if s.ns.Addr() == nil {
		return ""
	}
	return s.ns.ClientURL()
}

// Healthy reports whether the server and JetStream are up, and every stream was recovered
// and has no write error: a stream whose write failed (a full disk) refuses every later
// write until the server restarts, though there is room again.
//
// A stream that "could not be recovered" counts only once it has been so for
// recoverGrace: single-server Healthz lists the stream directories on disk and looks each
// up, so a stream being created (a bucket opened on first use) shows so for a moment.
func (s *Server) Healthy() error {
	st := s.health()
	now := time.Now()
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	seen := map[string]time.Time{}
	var errs []error
	for _, e := range st.Errors {
		if e.Type == server.HealthzErrorStream && strings.HasSuffix(e.Error, "could not be recovered") {
			first, ok := s.unrecovered[e.Error]
			if !ok {
				first = now
			}
			seen[e.Error] = first
			if now.Sub(first) < recoverGrace {
				continue
			}
		}
		errs = append(errs, errors.New(e.Error))
	}
	s.unrecovered = seen
	if len(st.Errors) == 0 && st.Error != "" {
		errs = append(errs, errors.New(st.Error))
	}
	errs = append(errs, s.DataDirError())
	return errors.Join(errs...)
}

// DataDirError reports a data directory removed or replaced while the server runs (a
// cleaner of /tmp, an rm -rf): its lock file is no longer the one this process locked.
// nats-server goes on writing into the files it has open, which no start will find
// again, and another foreman could take the directory anew. nil while it is in place.
func (s *Server) DataDirError() error {
	now, err := os.Stat(s.lockPath)
	switch {
	case err == nil && os.SameFile(now, s.lockHeld):
		return nil
	case err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR):
		// ENOTDIR: a file stands where the directory was, which is it replaced, for good.
		return fmt.Errorf("data directory %s %w: %w", filepath.Dir(s.lockPath), ErrDataDirUnchecked, err)
	}
	return fmt.Errorf("data directory %s was removed or replaced while foreman ran (its lock file %s is not the one held): what is stored now is lost at the next start; restart foreman", filepath.Dir(s.lockPath), s.lockPath)
}

// recoverGrace is how long a stream may show "could not be recovered" before Healthy
// reports it: far longer than creating one takes.
var recoverGrace = 5 * time.Second

// health is nats-server's Healthz with its details, asked once more when it says the
// server did not complete its startup though it did. Without a listener (the embedded
// default) Healthz's readiness check races the startup's closed channel against a 1 ms
// timer: on a loaded machine the timer may be ready too, the select picks either, and a
// server up for hours was reported "failed to be ready for connections after 1ms: startup
// did not complete", its streams' errors (a full disk's write error) not even looked at.
func (s *Server) health() *server.HealthStatus {
	healthz := s.healthz
	if healthz == nil {
		healthz = s.ns.Healthz
	}
	opts := &server.HealthzOptions{Details: true}
	st := healthz(opts)
	if len(st.Errors) == 0 && strings.Contains(st.Error, "startup did not complete") && s.ns.ReadyForConnections(time.Second) {
		st = healthz(opts)
	}
	return st
}

// WriteError reports the streams among streams (all when none are named) that failed a
// write (a disk that filled up): nats-server stores nothing more in such a stream, and
// answers none of the publishes it fails, until it is restarted; and a data directory
// that is gone (DataDirError), where what is written is lost. nil when there is none.
// A data directory that could not be checked (ErrDataDirUnchecked, a fault that may
// pass) is reported only when no stream has a write error: one that does needs a
// restart whatever the look at the directory found.
func (s *Server) WriteError(streams ...string) error {
	dirErr := s.DataDirError()
	if dirErr != nil && !errors.Is(dirErr, ErrDataDirUnchecked) {
		return dirErr
	}
	st := s.health()
	var errs []error
	for _, e := range st.Errors {
		if e.Type == server.HealthzErrorStream && strings.Contains(e.Error, " write error: ") &&
			(len(streams) == 0 || slices.Contains(streams, e.Stream)) {
			errs = append(errs, StreamWriteError(e.Error))
		}
	}
	if len(errs) == 0 {
		return dirErr
	}
	return errors.Join(errs...)
}

// Shutdown stops the server, waits for it and releases the data directory. Safe to call twice.
func (s *Server) Shutdown() {
	s.stopOnce.Do(func() {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
		s.unlock()
	})
}

func (s *Server) unlock() {
	if s.lock != nil {
		unlockFile(s.lock)
		s.lock.Close()
		s.lock = nil
	}
}

// storeMissing reports whether dir holds the lock file of an earlier start but no
// JetStream store: a start would make an empty one, without a word from nats-server.
func storeMissing(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, lockName)); err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, "jetstream"))
	return errors.Is(err, fs.ErrNotExist)
}

// lockName is the data directory's lock file.
const lockName = "foreman.lock"

func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("natsd: %w: lock file: %w", ErrDataDir, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s (lock %s held)", ErrLocked, dir, path)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

func randomSecret() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(b)
}

// DefaultDataDir is a "foreman" folder in the user's data directory:
// $XDG_DATA_HOME/foreman when that is set, else ~/Library/Application Support/foreman on
// macOS, %LocalAppData%\foreman on Windows and ~/.local/share/foreman elsewhere.
func DefaultDataDir() (string, error) {
	return defaultDataDir(runtime.GOOS, os.Getenv, os.UserHomeDir)
}

func defaultDataDir(goos string, getenv func(string) string, home func() (string, error)) (string, error) {
	if d := getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "foreman"), nil
	}
	if d := getenv("LocalAppData"); goos == "windows" && d != "" {
		return filepath.Join(d, "foreman"), nil
	}
	h, err := home()
	if err != nil {
		return "", err
	}
	switch goos {
	case "darwin":
		return filepath.Join(h, "Library", "Application Support", "foreman"), nil
	case "windows":
		return filepath.Join(h, "AppData", "Local", "foreman"), nil
	}
	return filepath.Join(h, ".local", "share", "foreman"), nil
}

// HoldsStream reports whether data directory dir holds the store of stream, made by an
// embedded server that ran in it: a foreman that now runs on FOREMAN_NATS_URL looks
// whether it left jobs there (without starting a server where there is nothing).
func HoldsStream(dir, stream string) bool {
	_, err := os.Stat(filepath.Join(dir, "jetstream", foremanAccount, "streams", stream))
	return err == nil
}

// StreamWriteError is a stream's write error as nats-server's Healthz words it, which is
// text only. One that names a file system gone read-only (ext4's errors=remount-ro after a
// disk error) wraps syscall.EROFS, so that errors.Is tells it from a full disk: its fix is
// the disk's repair, not room.
func StreamWriteError(text string) error {
	if strings.Contains(text, syscall.EROFS.Error()) {
		return errnoText{text, syscall.EROFS}
	}
	return errors.New(text)
}

// errnoText is an error's text with the errno it names.
type errnoText struct {
	text  string
	errno syscall.Errno
}

func (e errnoText) Error() string { return e.text }
func (e errnoText) Unwrap() error { return e.errno }
