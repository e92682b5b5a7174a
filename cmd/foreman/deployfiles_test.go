package main

import (
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/cmd/foreman/app"
)

// The image runs as a non-root user and brings /data owned by it: Docker copies the
// owner of an image's directory into a fresh named volume, which would otherwise be
// root's and unwritable for foreman.
func TestDockerfileNonRootWithWritableData(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	final := string(data)[strings.LastIndex(string(data), "\nFROM "):]
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final)
	if user == nil || strings.HasPrefix(user[1], "root") || strings.HasPrefix(user[1], "0") {
		t.Fatalf("the final stage runs as %v, want a non-root USER", user)
	}
	uid := strings.Split(user[1], ":")[0]
	chown := regexp.MustCompile(`(?m)^COPY --from=\S+ --chown=` + uid + `(:\S+)? \S+ /data$`).FindStringIndex(final)
	volume := strings.Index(final, "VOLUME /data")
	if chown == nil || volume < 0 || chown[0] > volume {
		t.Errorf("the final stage must create /data owned by %s before VOLUME /data", uid)
	}
}

// The compose file's cluster profile: three NATS nodes from the shipped cluster config and
// two foremen, each with its own Ollama, on all three nodes.
func TestComposeClusterProfile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{
		"\n  n1:", "\n  n2:", "\n  n3:", "\n  foreman-a:", "\n  foreman-b:", "profiles: [cluster]",
		"./nats-cluster.conf:/etc/nats/nats-cluster.conf:ro", "${FOREMAN_OLLAMA_URL_A", "${FOREMAN_OLLAMA_URL_B",
		"@n1:4222,", "@n2:4222,", "@n3:4222", `FOREMAN_NATS_REPLICAS: "3"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("deploy/compose.yaml lacks %q", want)
		}
	}
}

// composeService is what TestComposeForemenKeepTheirSettings reads of a compose service,
// YAML merge keys (<<: *anchor) resolved.
type composeService struct {
	foreman  bool // built from deploy/Dockerfile
	hostname string
	env      map[string]string
	// stopGrace is its stop_grace_period ("" = Docker's 10 s).
	stopGrace string
}

// composeServices reads the services of a compose file as deploy/compose.yaml writes
// them: two spaces a level, environment as a map.
func composeServices(t *testing.T, text string) map[string]*composeService {
	t.Helper()
	start, end := strings.Index(text, "\nservices:\n"), strings.Index(text, "\nvolumes:")
	if start < 0 || end < start {
		t.Fatal("no services section")
	}
	services := map[string]*composeService{}
	anchors := map[string]*composeService{}
	envAnchors := map[string]map[string]string{}
	header := regexp.MustCompile(`^  ([a-z0-9-]+):(?: &(\S+))?$`)
	field := regexp.MustCompile(`^    ([a-z_<]+):(?: (.*))?$`)
	entry := regexp.MustCompile(`^      ([A-Za-z_<]+): (.*)$`)
	var svc *composeService
	inEnv := false
	for _, line := range strings.Split(text[start:end], "\n") {
		if m := header.FindStringSubmatch(line); m != nil {
			svc = &composeService{env: map[string]string{}}
			services[m[1]] = svc
			if m[2] != "" {
				anchors[m[2]] = svc
			}
			inEnv = false
			continue
		}
		if svc == nil {
			continue
		}
		if strings.Contains(line, "dockerfile: deploy/Dockerfile") {
			svc.foreman = true
		}
		if m := field.FindStringSubmatch(line); m != nil {
			inEnv = false
			switch m[1] {
			case "<<":
				base := anchors[strings.TrimPrefix(m[2], "*")]
				if base == nil {
					t.Fatalf("merge of an unknown anchor: %s", line)
				}
				svc.foreman, svc.hostname, svc.stopGrace = base.foreman, base.hostname, base.stopGrace
				svc.env = maps.Clone(base.env)
			case "hostname":
				svc.hostname = m[2]
			case "stop_grace_period":
				svc.stopGrace = m[2]
			case "environment":
				inEnv, svc.env = true, map[string]string{}
				if a, ok := strings.CutPrefix(m[2], "&"); ok {
					envAnchors[a] = svc.env
				}
			}
			continue
		}
		if m := entry.FindStringSubmatch(line); m != nil && inEnv {
			if m[1] == "<<" {
				for k, v := range envAnchors[strings.TrimPrefix(m[2], "*")] {
					if _, set := svc.env[k]; !set {
						svc.env[k] = v
					}
				}
				continue
			}
			svc.env[m[1]] = m[2]
		}
	}
	return services
}

// The compose file's foremen keep what deploy/.env sets (its environment beats env_file:
// there FOREMAN_OLLAMA_URL may only be a default of a variable), and each has a target
// name of its own that outlives its container: foreman remembers its Ollama's model list
// under it (ADR-0047), and the default, the host name, is in Docker the container id,
// new at every recreate. The Dockerfile's docker run line gives one too.
func TestComposeForemenKeepTheirSettings(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	services := composeServices(t, string(data))
	names := map[string]string{}
	for _, svc := range []string{"foreman", "foreman-a", "foreman-b"} {
		s := services[svc]
		if s == nil || !s.foreman {
			t.Fatalf("deploy/compose.yaml has no foreman service %s", svc)
		}
		if url := s.env["FOREMAN_OLLAMA_URL"]; !strings.HasPrefix(url, "${FOREMAN_OLLAMA_URL") {
			t.Errorf("%s: FOREMAN_OLLAMA_URL is %q: it overrides deploy/.env; write ${FOREMAN_OLLAMA_URL...:-default}", svc, url)
		}
		name := s.hostname
		if tn, ok := s.env["FOREMAN_TARGET_NAME"]; ok {
			name = tn
			if i := strings.Index(tn, ":-"); strings.HasPrefix(tn, "${") && i > 0 {
				name = strings.TrimSuffix(tn[i+2:], "}")
			}
		}
		if name == "" {
			t.Errorf("%s has neither a hostname nor a FOREMAN_TARGET_NAME: its target name would be the container id", svc)
			continue
		}
		if other, dup := names[name]; dup {
			t.Errorf("%s and %s have the same target name %q", svc, other, name)
		}
		names[name] = svc
	}
	if s := services["foreman"]; s != nil && s.env["FOREMAN_OLLAMA_URL"] != "${FOREMAN_OLLAMA_URL:-http://host.docker.internal:11434}" {
		t.Errorf("foreman: FOREMAN_OLLAMA_URL is %q, want deploy/.env's, else the Docker host's Ollama", s.env["FOREMAN_OLLAMA_URL"])
	}
	docker, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	run := regexp.MustCompile(`(?m)^# Run: +docker run .*(\n#  +.*)*`).FindString(string(docker))
	if run == "" || !strings.Contains(run, "--hostname") && !strings.Contains(run, "FOREMAN_TARGET_NAME") {
		t.Errorf("the Dockerfile's docker run line gives no --hostname nor FOREMAN_TARGET_NAME:\n%s", run)
	}
}

// The systemd unit runs foreman as a dynamic user, which cannot read root's 0600 files:
// every setting that names a secret file is passed as a credential (LoadCredential=, the
// setting pointing at %d/<name>), written in the unit to uncomment. Where systemd-analyze
// is at hand, the unit with them uncommented is verified.
func TestSystemdUnitPassesSecretFilesAsCredentials(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/foreman.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := string(data)
	if !strings.Contains(unit, "\nDynamicUser=yes\n") {
		t.Fatal("the unit no longer runs foreman as a dynamic user: this test is to be revised")
	}
	for _, env := range []string{"FOREMAN_AUTH_TOKENS_FILE", "FOREMAN_NATS_TLS_KEY", "FOREMAN_NATS_CREDS", "FOREMAN_NATS_NKEY_SEED"} {
		m := regexp.MustCompile(`(?m)^#?Environment=` + env + `=%d/(\S+)$`).FindStringSubmatch(unit)
		if m == nil {
			t.Errorf("the unit does not point %s at a credential (%%d/<name>)", env)
			continue
		}
		if !regexp.MustCompile(`(?m)^#?LoadCredential=` + regexp.QuoteMeta(m[1]) + `:/\S+$`).MatchString(unit) {
			t.Errorf("%s=%%d/%s: the unit loads no credential %s", env, m[1], m[1])
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("no systemd-analyze: the unit is not verified")
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	uncommented := regexp.MustCompile(`(?m)^#((?:LoadCredential|Environment)=)`).ReplaceAllString(unit, "$1")
	uncommented = strings.Replace(uncommented, "ExecStart=/usr/local/bin/foreman ", "ExecStart="+self+" ", 1)
	path := filepath.Join(t.TempDir(), "foreman.service")
	if err := os.WriteFile(path, []byte(uncommented), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), path+":") {
		t.Errorf("systemd-analyze verify of the unit with its credentials: %v\n%s", err, out)
	}
}

// Every way foreman is run as a service waits longer than FOREMAN_SHUTDOWN_TIMEOUT's
// default, plus some seconds, before it kills foreman: a graceful shutdown lets the running
// job finish (up to 25 s of the 30) and answers the waiting callers. Docker's own wait is
// 10 s: killed then, the running job is cut and runs again from the start, its sync
// caller's answer breaks off, and the store is not closed.
func TestDeployFilesWaitOutTheShutdown(t *testing.T) {
	t.Parallel()
	want := app.DefaultShutdownTimeout + 10*time.Second
	read := func(path string) string {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	seconds := func(what, s string) time.Duration {
		t.Helper()
		d, err := time.ParseDuration(s)
		if err != nil {
			if n, err := strconv.Atoi(s); err == nil {
				d = time.Duration(n) * time.Second
			} else {
				t.Fatalf("%s: %q is no duration", what, s)
			}
		}
		return d
	}
	if m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\S+)$`).FindStringSubmatch(read("../../deploy/foreman.service")); m == nil {
		t.Error("deploy/foreman.service sets no TimeoutStopSec")
	} else if d := seconds("TimeoutStopSec", m[1]); d < want {
		t.Errorf("deploy/foreman.service: TimeoutStopSec=%s, want at least %s", d, want)
	}
	if m := regexp.MustCompile(`<key>ExitTimeOut</key><integer>(\d+)</integer>`).FindStringSubmatch(read("../../deploy/com.foreman.serve.plist")); m == nil {
		t.Error("deploy/com.foreman.serve.plist sets no ExitTimeOut")
	} else if d := seconds("ExitTimeOut", m[1]); d < want {
		t.Errorf("deploy/com.foreman.serve.plist: ExitTimeOut=%s, want at least %s", d, want)
	}
	services := composeServices(t, read("../../deploy/compose.yaml"))
	for _, name := range []string{"foreman", "foreman-a", "foreman-b"} {
		s := services[name]
		switch {
		case s == nil:
			t.Errorf("deploy/compose.yaml has no service %s", name)
		case s.stopGrace == "":
			t.Errorf("deploy/compose.yaml: %s has no stop_grace_period: Docker kills it after 10 s, want at least %s", name, want)
		case seconds(name+": stop_grace_period", s.stopGrace) < want:
			t.Errorf("deploy/compose.yaml: %s: stop_grace_period %s, want at least %s", name, s.stopGrace, want)
		}
	}
	run := regexp.MustCompile(`(?m)^# Run: +docker run .*(\n#  +.*)*`).FindString(read("../../deploy/Dockerfile"))
	if m := regexp.MustCompile(`--stop-timeout[ =](\d+)`).FindStringSubmatch(run); m == nil {
		t.Errorf("the Dockerfile's docker run line gives no --stop-timeout: Docker kills foreman after 10 s:\n%s", run)
	} else if d := seconds("--stop-timeout", m[1]); d < want {
		t.Errorf("the Dockerfile's docker run line: --stop-timeout %s, want at least %s", d, want)
	}
}

// The Dockerfile's docker run line makes a foreman a client can use: one that reaches an
// Ollama (the image's default target, 127.0.0.1, is the container itself, where none
// runs; the Docker host's name needs --add-host on Linux), with a token the operator
// knows (one made inside the command line is seen by no one, and every call gets 401).
func TestDockerRunLineReachesOllamaWithAKnownToken(t *testing.T) {
	t.Parallel()
	docker, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	run := regexp.MustCompile(`(?m)^# Run: +docker run .*(\n#  +.*)*`).FindString(string(docker))
	if run == "" {
		t.Fatal("the Dockerfile has no docker run line")
	}
	m := regexp.MustCompile(`FOREMAN_OLLAMA_URL=(\S+)`).FindStringSubmatch(run)
	if m == nil {
		t.Fatalf("the docker run line sets no FOREMAN_OLLAMA_URL: the container's default, 127.0.0.1, is the container itself:\n%s", run)
	}
	u, err := url.Parse(m[1])
	if err != nil || u.Hostname() == "" || app.LoopbackAddr(net.JoinHostPort(u.Hostname(), "1")) {
		t.Errorf("the docker run line's FOREMAN_OLLAMA_URL=%s is the container itself", m[1])
	}
	if u != nil && u.Hostname() == "host.docker.internal" && !strings.Contains(run, "--add-host host.docker.internal:host-gateway") {
		t.Errorf("the docker run line names host.docker.internal without --add-host host.docker.internal:host-gateway, which Linux needs:\n%s", run)
	}
	if tok := regexp.MustCompile(`FOREMAN_AUTH_TOKEN=\S*`).FindString(run); strings.Contains(tok, "$(") || strings.Contains(tok, "`") {
		t.Errorf("the docker run line makes its token in place (%s): no one learns it, and every call gets 401", tok)
	}
}

// composeInterpolate expands the ${VAR}, ${VAR:-default} and ${VAR:?message} of a compose
// file's value with env, nested as Docker Compose nests them; an unset or empty VAR
// under :? is the error Compose stops with. eager expands a default whether or not it is
// used, as Compose did before compose-go 2.11 (2026-05): a :? within it stops Compose
// even when the variable before it is set.
func composeInterpolate(s string, env map[string]string, eager ...bool) (string, error) {
	early := len(eager) > 0 && eager[0]
	var out strings.Builder
	for i := 0; i < len(s); {
		if !strings.HasPrefix(s[i:], "${") {
			out.WriteByte(s[i])
			i++
			continue
		}
		depth, end := 0, -1
		for j := i; j < len(s) && end < 0; j++ {
			switch {
			case strings.HasPrefix(s[j:], "${"):
				depth++
				j++
			case s[j] == '}':
				if depth--; depth == 0 {
					end = j
				}
			}
		}
		if end < 0 {
			return "", fmt.Errorf("unclosed ${ in %q", s)
		}
		expr := s[i+2 : end]
		name, op, arg := expr, "", ""
		if k := strings.Index(expr, ":"); k >= 0 {
			name, op, arg = expr[:k], expr[k:k+2], expr[k+2:]
		}
		v := env[name]
		switch op {
		case ":-":
			if v == "" || early {
				d, err := composeInterpolate(arg, env, early)
				if err != nil {
					return "", err
				}
				if v == "" {
					v = d
				}
			}
		case ":?":
			if v == "" {
				return "", fmt.Errorf("required variable %s is missing a value: %s", name, arg)
			}
		case "":
		default:
			return "", fmt.Errorf("unknown interpolation %q", expr)
		}
		out.WriteString(v)
		i = end + 1
	}
	return out.String(), nil
}

// The compose file's foremen start with either kind of token in deploy/.env, and with
// none no foreman serves: it required FOREMAN_AUTH_TOKEN, so named tokens (one per
// program, FOREMAN_AUTH_TOKENS) could not be used on their own, and set beside it they
// were refused by foreman, which takes one kind only. Both ways Compose has expanded a
// nested default are tried: a check "one or the other" written as ${A:-${B:?...}} stops
// a Compose that expands defaults eagerly (before compose-go 2.11, May 2026) with named
// tokens alone, so the check is foreman's own.
func TestComposeTakesEitherKindOfToken(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	services := composeServices(t, text)
	// What compose interpolates besides the services: the top-level extension fields.
	var extensions []string
	for _, m := range regexp.MustCompile(`(?m)^x-[a-z0-9-]+: (.*)$`).FindAllStringSubmatch(text, -1) {
		extensions = append(extensions, m[1])
	}
	for _, eager := range []bool{false, true} {
		// load is what a foreman service's container gets from deploy/.env (dotenv): its
		// env_file, then its environment over it, the image's FOREMAN_ADDR under both; or
		// the error compose stops with.
		load := func(svc string, dotenv map[string]string) (map[string]string, error) {
			for _, x := range extensions {
				if _, err := composeInterpolate(x, dotenv, eager); err != nil {
					return nil, err
				}
			}
			env := map[string]string{"FOREMAN_ADDR": "0.0.0.0:8080"}
			maps.Copy(env, dotenv)
			for k, v := range services[svc].env {
				if u, err := strconv.Unquote(v); err == nil && strings.HasPrefix(v, `"`) {
					v = u // a YAML double-quoted scalar
				}
				val, err := composeInterpolate(v, dotenv, eager)
				if err != nil {
					return nil, err
				}
				env[k] = val
			}
			return env, nil
		}
		for _, svc := range []string{"foreman", "foreman-a", "foreman-b"} {
			if services[svc] == nil || !services[svc].foreman {
				t.Fatalf("deploy/compose.yaml has no foreman service %s", svc)
			}
			for _, dotenv := range []map[string]string{
				{"FOREMAN_AUTH_TOKEN": "single-token"},
				{"FOREMAN_AUTH_TOKENS": "alice:token-a,bob:token-b"},
			} {
				env, err := load(svc, dotenv)
				if err != nil {
					t.Errorf("%s with deploy/.env %v (eager defaults %v): compose stops: %v", svc, dotenv, eager, err)
					continue
				}
				cfg, err := parseConfig(t, nil, env)
				if err != nil {
					t.Errorf("%s with deploy/.env %v: foreman refuses to start: %v", svc, dotenv, err)
					continue
				}
				if cfg.AuthToken == "" && len(cfg.AuthTokens) == 0 {
					t.Errorf("%s with deploy/.env %v: foreman has no token", svc, dotenv)
				}
			}
			// With none, compose stops, or foreman does, naming the settings.
			env, err := load(svc, map[string]string{})
			if err != nil {
				continue
			}
			if _, err := parseConfig(t, nil, env); err == nil || !strings.Contains(err.Error(), "FOREMAN_AUTH_TOKEN") {
				t.Errorf("%s with no token in deploy/.env: foreman starts (%v), want it refused", svc, err)
			}
		}
	}
}
