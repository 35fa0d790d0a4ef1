package main

// Tests of deploy/: every file an operator copies must be accepted by this
// binary as it is, because a configuration that only fails on the production
// host is found too late. CI has Go and nothing else (no docker, kubectl or
// systemd-analyze), so each format gets a small parser here and every chatd
// command line found in it is run with --check.

import (
	"bufio"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"
)

var (
	// Absolute, because chatd runs in a temporary directory.
	repoRoot, _ = filepath.Abs(filepath.Join("..", ".."))
	deployDir   = filepath.Join(repoRoot, "deploy")
	roles       = []string{"all", "broker", "edge", "worker"}
)

// deployFiles lists the files under deploy/sub whose names match pattern,
// and fails when there are none: a test that checks nothing must not pass.
func deployFiles(t *testing.T, sub, pattern string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(filepath.Join(deployDir, sub), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ok, _ := filepath.Match(pattern, d.Name()); ok && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatalf("no %s under deploy/%s", pattern, sub)
	}
	return out
}

func rel(p string) string {
	if r, err := filepath.Rel(deployDir, p); err == nil && !strings.HasPrefix(r, "..") {
		return filepath.ToSlash(r)
	}
	return p
}

// cleanEnv is the test's environment without CHATD_* variables, so that a
// developer's own settings cannot make a deploy file pass or fail. The race
// detector would otherwise hold every exit for a second.
func cleanEnv(extra ...string) []string {
	env := []string{"GORACE=atexit_sleep_ms=0"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CHATD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// check runs chatd with args and --check and fails unless it accepts them.
func check(t *testing.T, env []string, args ...string) {
	t.Helper()
	cmd := exec.Command(binary, append(slices.Clone(args), "--check")...)
	cmd.Env = cleanEnv(env...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration ok") {
		t.Errorf("chatd %s --check with %q: %v\n%s", strings.Join(args, " "), env, err, out)
	}
}

var (
	roleVarsMu    sync.Mutex
	roleVarsCache = map[string]map[string]bool{}
)

// roleVars is the set of CHATD_* variables a role reads, taken from its -h
// output. The binary ignores any other CHATD_* variable without a word, so a
// misspelt one in a deploy file would silently leave a default in place.
func roleVars(t *testing.T, role string) map[string]bool {
	t.Helper()
	roleVarsMu.Lock()
	defer roleVarsMu.Unlock()
	if v, ok := roleVarsCache[role]; ok {
		return v
	}
	cmd := exec.Command(binary, role, "-h")
	cmd.Env = cleanEnv()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("chatd %s -h: %v\n%s", role, err, out)
	}
	vars := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+-([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		vars["CHATD_"+strings.ToUpper(strings.ReplaceAll(m[1], "-", "_"))] = true
	}
	if len(vars) < 5 {
		t.Fatalf("chatd %s -h: found only %v", role, vars)
	}
	roleVarsCache[role] = vars
	return vars
}

// checkVars fails on CHATD_* variables the role does not read, and on
// variables that a flag on the command line overrides: either way the
// value written in the file is not the one in effect.
func checkVars(t *testing.T, where, role string, env, args []string) {
	t.Helper()
	known := roleVars(t, role)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "CHATD_") {
			continue
		}
		if !known[k] {
			t.Errorf("%s: chatd %s does not read %s", where, role, k)
		}
		flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, "CHATD_"), "_", "-"))
		if _, ok := flagValue(args, flag); ok {
			t.Errorf("%s: %s is overridden by --%s on the command line", where, k, flag)
		}
	}
}

// flagValue finds --name (or -name) in args, as "--name=v" or "--name v".
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		a = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
		if a == name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// roleOf infers the chatd role an environment file is for from its name.
func roleOf(name string) string {
	if strings.HasPrefix(name, "chatd") {
		return "all"
	}
	for _, r := range roles {
		if strings.HasPrefix(name, r) {
			return r
		}
	}
	return ""
}

// readEnvFile reads a systemd EnvironmentFile: KEY=VALUE lines, # and ;
// comments, values optionally quoted.
func readEnvFile(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var env []string
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		k = strings.TrimSpace(k)
		if !ok || !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(k) {
			t.Errorf("%s:%d: not KEY=VALUE: %q", rel(path), n, line)
			continue
		}
		v = strings.TrimSpace(v)
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env = append(env, k+"="+v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return env
}

// natsOptions parses a nats-server configuration file and runs the
// validation nats-server does at start-up, without starting anything.
// `chatd broker --check` only parses the file, so a cluster without
// server_name, say, passes --check and fails on the host.
func natsOptions(t *testing.T, path string) *server.Options {
	t.Helper()
	so, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("%s: %v", rel(path), err)
	}
	so.NoSigs = true
	ns, err := server.NewServer(so)
	if err != nil {
		t.Errorf("%s: nats-server would refuse it: %v", rel(path), err)
		return so
	}
	ns.Shutdown()
	return so
}

// checkLikeFlags fails when a configuration file leaves out what `chatd
// broker` sets when configured by flags, so that moving a broker from flags
// to a file changes nothing else.
func checkLikeFlags(t *testing.T, where string, so *server.Options) {
	t.Helper()
	if so.MaxPayload != 8<<20 {
		t.Errorf("%s: max_payload is %d, chatd brokers use 8MB", where, so.MaxPayload)
	}
	if so.PingInterval != defaultNATSPing || so.MaxPingsOut != maxPingsOut {
		t.Errorf("%s: ping_interval %s and ping_max %d; chatd brokers use %s and %d, so that a half-open connection goes within about a minute",
			where, so.PingInterval, so.MaxPingsOut, defaultNATSPing, maxPingsOut)
	}
	if so.ServerName == "" {
		t.Errorf("%s: no server_name: monitoring, routes and JetStream then show a random id", where)
	}
	if so.JetStream && so.StoreDir == "" {
		t.Errorf("%s: JetStream without store_dir writes to a temporary directory", where)
	}
	if so.LeafNode.Port != 0 && !so.LeafNode.NoAdvertise {
		t.Errorf("%s: leafnodes without no_advertise: leaf servers may be sent to unreachable addresses", where)
	}
}

func TestDeployNATSConfigs(t *testing.T) {
	names := map[string]string{} // server_name → file, per directory
	for _, f := range deployFiles(t, "config", "*.conf") {
		t.Run(rel(f), func(t *testing.T) {
			check(t, nil, "broker", "--nats-config", f)
			so := natsOptions(t, f)
			checkLikeFlags(t, rel(f), so)
			key := filepath.Dir(f) + " " + so.ServerName
			if other, dup := names[key]; dup {
				t.Errorf("server_name %q in both %s and %s", so.ServerName, other, rel(f))
			}
			names[key] = rel(f)
		})
	}
}

func TestDeployEnvFiles(t *testing.T) {
	domains := map[string]bool{} // JetStream domains the brokers declare
	for _, f := range deployFiles(t, "config", "*.conf") {
		if so, err := server.ProcessConfigFile(f); err == nil && so.JetStreamDomain != "" {
			domains[so.JetStreamDomain] = true
		}
	}
	for _, f := range deployFiles(t, "config", "*.env") {
		t.Run(rel(f), func(t *testing.T) {
			t.Parallel()
			role := roleOf(filepath.Base(f))
			if role == "" {
				t.Fatalf("cannot tell the role of %s from its name (chatd*, broker*, edge*, worker*)", rel(f))
			}
			env := readEnvFile(t, f)
			var args []string
			if role == "broker" {
				// Beside a nats-server file the broker refuses the NATS
				// variables: check the two together.
				if confs, _ := filepath.Glob(filepath.Join(filepath.Dir(f), "nats*.conf")); len(confs) > 0 {
					args = []string{"--nats-config", confs[0]}
				}
			}
			checkVars(t, rel(f), role, env, nil)
			check(t, env, append([]string{role}, args...)...)
			for _, kv := range env {
				if d, ok := strings.CutPrefix(kv, "CHATD_JS_DOMAIN="); ok && !domains[d] {
					t.Errorf("%s: CHATD_JS_DOMAIN=%s, but no broker file declares that domain", rel(f), d)
				}
			}
		})
	}
}

// unitFile is a parsed systemd unit: section → key → values in order.
type unitFile struct {
	name     string
	sections map[string]map[string][]string
}

func (u *unitFile) get(section, key string) []string { return u.sections[section][key] }

func (u *unitFile) one(section, key string) string {
	if v := u.get(section, key); len(v) > 0 {
		return v[len(v)-1]
	}
	return ""
}

// Directives the units may use. systemd only warns about an unknown one and
// starts the service without it, so a misspelt hardening line would pass
// unnoticed; without systemd-analyze in CI, this list stands in for it.
var unitDirectives = map[string][]string{
	"Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before", "PartOf", "BindsTo",
		"ConditionPathExists", "AssertPathExists", "StartLimitIntervalSec", "StartLimitBurst"},
	"Install": {"WantedBy", "RequiredBy", "Alias", "Also", "DefaultInstance"},
	"Service": {"Type", "ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost",
		"Environment", "EnvironmentFile", "LoadCredential", "SetCredential", "WorkingDirectory",
		"User", "Group", "DynamicUser", "SupplementaryGroups",
		"StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode",
		"CacheDirectory", "LogsDirectory", "ConfigurationDirectory", "ReadWritePaths", "ReadOnlyPaths",
		"Restart", "RestartSec", "KillSignal", "KillMode", "TimeoutStartSec", "TimeoutStopSec", "SendSIGKILL",
		"LimitNOFILE", "LimitNPROC", "LimitCORE", "TasksMax", "MemoryMax", "MemoryHigh", "CPUQuota",
		"NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers",
		"ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
		"ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset", "RestrictAddressFamilies",
		"RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
		"MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter", "SystemCallErrorNumber",
		"CapabilityBoundingSet", "AmbientCapabilities", "UMask", "IPAddressAllow", "IPAddressDeny",
		"StandardOutput", "StandardError", "SyslogIdentifier"},
}

// parseUnit reads a unit file the way systemd does: [Section] headers,
// Key=Value lines, # and ; comments, trailing backslash continues a line.
func parseUnit(t *testing.T, path string) *unitFile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := &unitFile{name: filepath.Base(path), sections: map[string]map[string][]string{}}
	section := ""
	lines := strings.Split(string(data), "\n")
	for n := 0; n < len(lines); n++ {
		line := strings.TrimSpace(lines[n])
		for strings.HasSuffix(line, `\`) && n+1 < len(lines) {
			n++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[n])
		}
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				t.Fatalf("%s:%d: bad section header %q", rel(path), n+1, line)
			}
			section = line[1 : len(line)-1]
			if u.sections[section] == nil {
				u.sections[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not Key=Value inside a section: %q", rel(path), n+1, line)
			}
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !slices.Contains(unitDirectives[section], k) {
				t.Errorf("%s:%d: unknown directive %s= in [%s]", rel(path), n+1, k, section)
			}
			u.sections[section][k] = append(u.sections[section][k], v)
		}
	}
	return u
}

// specifiers expands systemd's %-specifiers for an instance of the unit on
// a host named "host".
func (u *unitFile) specifiers(t *testing.T, s, instance string) string {
	t.Helper()
	prefix, _, _ := strings.Cut(strings.TrimSuffix(u.name, ".service"), "@")
	full := u.name
	if instance != "" {
		full = strings.Replace(u.name, "@.", "@"+instance+".", 1)
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i++; i == len(s) {
			t.Fatalf("%s: %% at the end of %q", u.name, s)
		}
		switch s[i] {
		case 'i', 'I':
			b.WriteString(instance)
		case 'H', 'l':
			b.WriteString("host")
		case 'n':
			b.WriteString(full)
		case 'N':
			b.WriteString(strings.TrimSuffix(full, ".service"))
		case 'p', 'P':
			b.WriteString(prefix)
		case 'S':
			b.WriteString("/var/lib")
		case 't':
			b.WriteString("/run")
		case 'E':
			b.WriteString("/etc")
		case '%':
			b.WriteByte('%')
		default:
			t.Fatalf("%s: specifier %%%c in %q is not supported by this test", u.name, s[i], s)
		}
	}
	return b.String()
}

// splitWords splits a command line with shell (and systemd) quoting:
// whitespace separates words, '…' is literal, "…" and \ escape.
func splitWords(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", s)
			}
			w.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte(`"\$`+"`", s[i+1]) >= 0 {
					i++
				}
				w.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, fmt.Errorf(`unterminated " in %q`, s)
			}
			inWord = true
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}

// expandVars replaces $NAME and ${NAME} in s from env; an unset variable is
// an error, where systemd would quietly substitute nothing.
func expandVars(s string, env map[string]string) (string, error) {
	var missing []string
	out := os.Expand(s, func(k string) string {
		v, ok := env[k]
		if !ok {
			missing = append(missing, k)
		}
		return v
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("unset variables %v in %q", missing, s)
	}
	return out, nil
}

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func envList(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// unitInstall is one way a unit is installed from a deploy/config
// directory: its instance, and the deploy file behind each /etc path.
type unitInstall struct {
	instance string
	files    map[string]string
}

func (in unitInstall) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(in.files)) {
		parts = append(parts, rel(in.files[k]))
	}
	if in.instance != "" {
		return "@" + in.instance + " " + strings.Join(parts, ",")
	}
	return strings.Join(parts, ",")
}

// fileRef is a file a unit reads from outside: an EnvironmentFile, or the
// source of a LoadCredential.
type fileRef struct {
	path     string // as written, with specifiers
	optional bool   // "-" prefix: a missing file is fine
}

func (u *unitFile) fileRefs() []fileRef {
	var refs []fileRef
	for _, v := range u.get("Service", "EnvironmentFile") {
		p, opt := strings.CutPrefix(v, "-")
		refs = append(refs, fileRef{p, opt})
	}
	for _, v := range u.get("Service", "LoadCredential") {
		if _, p, ok := strings.Cut(v, ":"); ok {
			refs = append(refs, fileRef{p, false})
		}
	}
	return refs
}

// installs finds how the unit is installed from dir. /etc/chatd/NAME.EXT
// is dir/NAME.EXT, or any dir/NAME-*.EXT (one per host, such as
// nats-1.conf); for a template, /etc/chatd/edge-%i.env is dir/edge-*.env
// with the instance in place of *. A unit whose required files are not in
// dir does not belong to that topology.
func (u *unitFile) installs(t *testing.T, dir string) []unitInstall {
	t.Helper()
	refs := u.fileRefs()
	instances := []string{""}
	if strings.Contains(u.name, "@.") {
		instances = nil
		for _, r := range refs {
			if base := filepath.Base(r.path); strings.Contains(base, "%i") {
				matches, _ := filepath.Glob(filepath.Join(dir, strings.ReplaceAll(base, "%i", "*")))
				pre, post, _ := strings.Cut(base, "%i")
				for _, m := range matches {
					instances = append(instances, strings.TrimSuffix(strings.TrimPrefix(filepath.Base(m), pre), post))
				}
				break
			}
		}
	}
	var out []unitInstall
	for _, inst := range instances {
		variants := []map[string]string{{}}
		for _, r := range refs {
			etc := u.specifiers(t, r.path, inst)
			base := filepath.Base(etc)
			candidates, _ := filepath.Glob(filepath.Join(dir, base))
			if len(candidates) == 0 {
				ext := filepath.Ext(base)
				candidates, _ = filepath.Glob(filepath.Join(dir, strings.TrimSuffix(base, ext)+"-*"+ext))
			}
			if len(candidates) == 0 {
				if r.optional {
					continue
				}
				variants = nil
				break
			}
			var next []map[string]string
			for _, v := range variants {
				for _, c := range candidates {
					m := maps.Clone(v)
					m[etc] = c
					next = append(next, m)
				}
			}
			variants = next
		}
		for _, v := range variants {
			out = append(out, unitInstall{inst, v})
		}
	}
	return out
}

// How long each role may take to stop on SIGTERM, from cmd/chatd/main.go:
// serveEdge drains for up to 10s, closeWorker waits up to 10s,
// shutdownBroker up to 15s; all does the three in turn.
var stopBudget = map[string]time.Duration{"edge": 10 * time.Second, "worker": 10 * time.Second,
	"broker": 15 * time.Second, "all": 35 * time.Second}

// systemdDuration parses the time spans the units use ("45s", "2min").
func systemdDuration(s string) (time.Duration, error) {
	s = strings.ReplaceAll(strings.ReplaceAll(s, " ", ""), "min", "m")
	if _, err := strconv.Atoi(s); err == nil {
		s += "s"
	}
	return time.ParseDuration(s)
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	r, err := filepath.Rel(dir, path)
	return err == nil && r != ".." && !strings.HasPrefix(r, "../")
}

func TestDeploySystemdUnits(t *testing.T) {
	var dirs []string
	for _, f := range deployFiles(t, "config", "*") {
		if !slices.Contains(dirs, filepath.Dir(f)) {
			dirs = append(dirs, filepath.Dir(f))
		}
	}
	for _, path := range deployFiles(t, "systemd", "*.service") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			t.Parallel()
			u := parseUnit(t, path)
			for _, s := range []string{"Unit", "Service", "Install"} {
				if u.sections[s] == nil {
					t.Errorf("no [%s] section", s)
				}
			}
			for k, want := range map[string]string{"Restart": "on-failure", "KillSignal": "SIGTERM",
				"NoNewPrivileges": "yes", "ProtectSystem": "strict"} {
				if got := u.one("Service", k); got != want {
					t.Errorf("%s=%q, want %q", k, got, want)
				}
			}
			if u.one("Service", "DynamicUser") != "yes" && u.one("Service", "User") == "" {
				t.Errorf("runs as root: set DynamicUser=yes or User=")
			}
			if n, err := strconv.Atoi(u.one("Service", "LimitNOFILE")); err != nil || n < 65536 {
				t.Errorf("LimitNOFILE=%q: one descriptor per client needs at least 65536", u.one("Service", "LimitNOFILE"))
			}
			execs := u.get("Service", "ExecStart")
			if len(execs) != 1 {
				t.Fatalf("want one ExecStart, got %q", execs)
			}
			// Prefixes change how systemd runs the command, not the command.
			words, err := splitWords(strings.TrimLeft(execs[0], "-@:+!"))
			if err != nil {
				t.Fatal(err)
			}
			if len(words) < 2 || filepath.Base(words[0]) != "chatd" || !slices.Contains(roles, words[1]) {
				t.Fatalf("ExecStart=%q is not `chatd <role> …`", execs[0])
			}
			role := words[1]
			stop, err := systemdDuration(u.one("Service", "TimeoutStopSec"))
			if err != nil || stop <= stopBudget[role] {
				t.Errorf("TimeoutStopSec=%q: chatd %s may take %s to stop on SIGTERM; systemd would SIGKILL it first",
					u.one("Service", "TimeoutStopSec"), role, stopBudget[role])
			}
			tested := 0
			for _, dir := range dirs {
				for _, in := range u.installs(t, dir) {
					tested++
					t.Run(in.String(), func(t *testing.T) { checkUnitInstall(t, u, words, in, stop) })
				}
			}
			if tested == 0 {
				t.Errorf("no directory under deploy/config has the files %v this unit reads", u.fileRefs())
			}
		})
	}
}

// checkUnitInstall runs the unit's ExecStart with --check as systemd would
// start it: specifiers expanded, environment files loaded, credentials in
// $CREDENTIALS_DIRECTORY, and $STATE_DIRECTORY set.
func checkUnitInstall(t *testing.T, u *unitFile, words []string, in unitInstall, stop time.Duration) {
	env := map[string]string{}
	for _, v := range u.get("Service", "EnvironmentFile") {
		etc := u.specifiers(t, strings.TrimPrefix(v, "-"), in.instance)
		if f, ok := in.files[etc]; ok {
			maps.Copy(env, envMap(readEnvFile(t, f)))
		}
	}
	for _, v := range u.get("Service", "Environment") {
		ws, err := splitWords(u.specifiers(t, v, in.instance))
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(env, envMap(ws))
	}
	fileEnv := envList(env)
	var stateDirs []string
	for _, v := range u.get("Service", "StateDirectory") {
		for _, d := range strings.Fields(u.specifiers(t, v, in.instance)) {
			stateDirs = append(stateDirs, filepath.Join("/var/lib", d))
		}
	}
	if len(stateDirs) > 0 {
		env["STATE_DIRECTORY"] = strings.Join(stateDirs, ":")
	}
	if creds := u.get("Service", "LoadCredential"); len(creds) > 0 {
		dir := t.TempDir()
		for _, c := range creds {
			id, src, _ := strings.Cut(c, ":")
			data, err := os.ReadFile(in.files[u.specifiers(t, src, in.instance)])
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, id), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env["CREDENTIALS_DIRECTORY"] = dir
	}
	var args []string
	for _, w := range words[1:] {
		w, err := expandVars(u.specifiers(t, w, in.instance), env)
		if err != nil {
			t.Fatalf("ExecStart: %v", err)
		}
		args = append(args, w)
	}
	role := args[0]
	checkVars(t, in.String(), role, fileEnv, args)
	check(t, envList(env), args...)

	// ProtectSystem=strict makes everything read-only but the state
	// directories: a data directory elsewhere fails at the first write.
	var writes []string
	if d, ok := flagValue(args, "data"); ok {
		writes = append(writes, d)
	} else if d, ok := env["CHATD_DATA"]; ok {
		writes = append(writes, d)
	} else if role == "all" || role == "worker" || role == "broker" {
		writes = append(writes, "./data (the default)")
	}
	if conf, ok := flagValue(args, "nats-config"); ok {
		so, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		writes = nil // the file replaces --data
		if so.JetStream {
			writes = append(writes, so.StoreDir)
		}
		if d, err := time.ParseDuration(env["CHATD_LAME_DUCK"]); err == nil && d >= stop {
			t.Errorf("CHATD_LAME_DUCK=%s does not fit in TimeoutStopSec=%s", d, stop)
		}
	}
	for _, w := range writes {
		if !slices.ContainsFunc(stateDirs, func(d string) bool { return within(w, d) }) {
			t.Errorf("chatd %s writes to %s, outside StateDirectory %v: read-only under ProtectSystem=strict", role, w, stateDirs)
		}
	}
}

// k8sObject is the part of a Kubernetes object these tests look at.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Data map[string]string `yaml:"data"`
	Spec struct {
		Replicas                 int              `yaml:"replicas"`
		ServiceName              string           `yaml:"serviceName"`
		ClusterIP                string           `yaml:"clusterIP"`
		PublishNotReadyAddresses bool             `yaml:"publishNotReadyAddresses"`
		Selector                 map[string]any   `yaml:"selector"`
		Ports                    []k8sServicePort `yaml:"ports"`
		Template                 struct {
			Metadata struct {
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds *int           `yaml:"terminationGracePeriodSeconds"`
				Containers                    []k8sContainer `yaml:"containers"`
				Volumes                       []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
		VolumeClaimTemplates []struct {
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		} `yaml:"volumeClaimTemplates"`
	} `yaml:"spec"`
}

type k8sServicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort any    `yaml:"targetPort"`
}

type k8sContainer struct {
	Name    string   `yaml:"name"`
	Image   string   `yaml:"image"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
	Env     []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			FieldRef *struct {
				FieldPath string `yaml:"fieldPath"`
			} `yaml:"fieldRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []any `yaml:"envFrom"`
	Ports   []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	StartupProbe   *k8sProbe `yaml:"startupProbe"`
	VolumeMounts   []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

type k8sProbe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

// port resolves a port given by number or by name to the container's port.
func (c *k8sContainer) port(p any) (int, bool) {
	for _, cp := range c.Ports {
		if p == cp.Name || p == cp.ContainerPort {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

// matchLabels is a selector's labels: a Service's selector is the map
// itself, a workload's or a PodDisruptionBudget's is under matchLabels.
func matchLabels(sel map[string]any) map[string]string {
	if ml, ok := sel["matchLabels"].(map[string]any); ok {
		sel = ml
	}
	out := map[string]string{}
	for k, v := range sel {
		out[k] = fmt.Sprint(v)
	}
	return out
}

func selects(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// loadKubernetes decodes every document of every manifest; each must be a
// Kubernetes object with apiVersion, kind and metadata.name.
func loadKubernetes(t *testing.T) []*k8sObject {
	t.Helper()
	var objs []*k8sObject
	for _, f := range append(deployFiles(t, "kubernetes", "*.yaml"), deployFilesOptional(t, "kubernetes", "*.yml")...) {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(r)
		for n := 1; ; n++ {
			var doc yaml.Node
			if err := dec.Decode(&doc); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				t.Fatalf("%s: document %d: %v", rel(f), n, err)
			}
			if len(doc.Content) == 0 {
				continue
			}
			var generic map[string]any
			if err := doc.Decode(&generic); err != nil {
				t.Fatalf("%s: document %d is not a mapping: %v", rel(f), n, err)
			}
			var o k8sObject
			if err := doc.Decode(&o); err != nil {
				t.Fatalf("%s: document %d: %v", rel(f), n, err)
			}
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Errorf("%s: document %d lacks apiVersion, kind or metadata.name", rel(f), n)
			}
			objs = append(objs, &o)
		}
		r.Close()
	}
	return objs
}

func deployFilesOptional(t *testing.T, sub, pattern string) []string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(deployDir, sub, pattern))
	return matches
}

func TestDeployKubernetes(t *testing.T) {
	objs := loadKubernetes(t)
	byKind := map[string][]*k8sObject{}
	for _, o := range objs {
		byKind[o.Kind] = append(byKind[o.Kind], o)
	}
	for kind, n := range map[string]int{"StatefulSet": 2, "Deployment": 1, "Service": 1, "ConfigMap": 1, "PodDisruptionBudget": 1} {
		if len(byKind[kind]) < n {
			t.Errorf("%d %s, want at least %d", len(byKind[kind]), kind, n)
		}
	}
	services := map[string]*k8sObject{}
	for _, s := range byKind["Service"] {
		services[s.Metadata.Name] = s
	}
	workloads := append(slices.Clone(byKind["StatefulSet"]), byKind["Deployment"]...)
	rolesSeen := map[string]bool{}
	for _, w := range workloads {
		t.Run(w.Kind+"/"+w.Metadata.Name, func(t *testing.T) {
			tmpl := &w.Spec.Template
			if !selects(matchLabels(w.Spec.Selector), tmpl.Metadata.Labels) {
				t.Errorf("selector %v does not select the pod labels %v", w.Spec.Selector, tmpl.Metadata.Labels)
			}
			if w.Kind == "StatefulSet" {
				svc := services[w.Spec.ServiceName]
				if svc == nil || svc.Spec.ClusterIP != "None" {
					t.Errorf("serviceName %q is not a headless Service here", w.Spec.ServiceName)
				}
				if len(w.Spec.VolumeClaimTemplates) == 0 {
					t.Errorf("no volumeClaimTemplates: the pods' data would not survive a reschedule")
				}
			}
			for i := range tmpl.Spec.Containers {
				c := &tmpl.Spec.Containers[i]
				if len(c.Args) == 0 || !slices.Contains(roles, c.Args[0]) {
					continue
				}
				rolesSeen[c.Args[0]] = true
				t.Run(c.Name, func(t *testing.T) { checkK8sContainer(t, w, c, byKind, services) })
			}
		})
	}
	for _, r := range []string{"broker", "edge", "worker"} {
		if !rolesSeen[r] {
			t.Errorf("no container runs chatd %s", r)
		}
	}
	for _, s := range byKind["Service"] {
		t.Run("Service/"+s.Metadata.Name, func(t *testing.T) {
			sel := matchLabels(s.Spec.Selector)
			var pods []*k8sObject
			for _, w := range workloads {
				if selects(sel, w.Spec.Template.Metadata.Labels) {
					pods = append(pods, w)
				}
			}
			if len(pods) == 0 {
				t.Fatalf("selector %v matches no workload", sel)
			}
			for _, p := range s.Spec.Ports {
				target := p.TargetPort
				if target == nil {
					target = p.Port
				}
				for _, w := range pods {
					if !slices.ContainsFunc(w.Spec.Template.Spec.Containers, func(c k8sContainer) bool {
						_, ok := c.port(target)
						return ok
					}) {
						t.Errorf("port %s: targetPort %v is not a container port of %s", p.Name, target, w.Metadata.Name)
					}
				}
			}
		})
	}
	for _, pdb := range byKind["PodDisruptionBudget"] {
		sel := matchLabels(pdb.Spec.Selector)
		if !slices.ContainsFunc(byKind["StatefulSet"], func(w *k8sObject) bool {
			return selects(sel, w.Spec.Template.Metadata.Labels) && slices.ContainsFunc(w.Spec.Template.Spec.Containers,
				func(c k8sContainer) bool { return len(c.Args) > 0 && c.Args[0] == "broker" })
		}) {
			t.Errorf("PodDisruptionBudget %s does not select the brokers", pdb.Metadata.Name)
		}
	}
}

// checkK8sContainer runs a chatd container's arguments with --check, as the
// kubelet would start it: $(VAR) expanded from the container's env, and
// ConfigMap volumes at their mount paths.
func checkK8sContainer(t *testing.T, w *k8sObject, c *k8sContainer, byKind map[string][]*k8sObject, services map[string]*k8sObject) {
	if len(c.Command) > 0 {
		t.Errorf("command %q replaces the image's ENTRYPOINT /chatd", c.Command)
	}
	if len(c.EnvFrom) > 0 {
		t.Fatalf("envFrom is not supported by this test; extend it")
	}
	env := map[string]string{}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			env[e.Name] = w.Metadata.Name + "-0"
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace":
			env[e.Name] = "chatd"
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP":
			env[e.Name] = "10.0.0.1"
		default:
			t.Fatalf("env %s: this kind of valueFrom is not supported by this test; extend it", e.Name)
		}
	}
	// ConfigMap volumes become files in a temporary directory.
	configMaps := map[string]*k8sObject{}
	for _, cm := range byKind["ConfigMap"] {
		configMaps[cm.Metadata.Name] = cm
	}
	mounts := map[string]string{} // mount path → temporary path
	for _, vm := range c.VolumeMounts {
		for _, v := range w.Spec.Template.Spec.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil {
				continue
			}
			cm := configMaps[v.ConfigMap.Name]
			if cm == nil {
				t.Fatalf("volume %s: no ConfigMap %s", v.Name, v.ConfigMap.Name)
			}
			dir := t.TempDir()
			for k, data := range cm.Data {
				if err := os.WriteFile(filepath.Join(dir, k), []byte(data), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			mounts[vm.MountPath] = dir
			if vm.SubPath != "" {
				mounts[vm.MountPath] = filepath.Join(dir, vm.SubPath)
			}
		}
	}
	dollar := regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	var args []string
	for _, a := range c.Args {
		a = dollar.ReplaceAllStringFunc(a, func(m string) string {
			name := m[2 : len(m)-1]
			if v, ok := env[name]; ok {
				return v
			}
			t.Errorf("args: %s is not in the container's env; Kubernetes would pass it literally", m)
			return m
		})
		for mp, tmp := range mounts {
			if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(k, "-") && within(v, mp) {
				a = k + "=" + tmp + strings.TrimPrefix(v, mp)
			} else if within(a, mp) {
				a = tmp + strings.TrimPrefix(a, mp)
			}
		}
		args = append(args, a)
	}
	role := args[0]
	checkVars(t, c.Name, role, envList(env), args)
	check(t, envList(env), args...)

	if role == "broker" {
		conf, ok := flagValue(args, "nats-config")
		if !ok {
			t.Fatalf("a broker in Kubernetes is configured from the ConfigMap: no --nats-config")
		}
		// The configuration file reads the pod's environment ($POD_NAME).
		for k, v := range env {
			t.Setenv(k, v)
		}
		so := natsOptions(t, conf)
		checkLikeFlags(t, c.Name, so)
		checkRoutes(t, w, so, services)
	}
	if role == "edge" || role == "worker" {
		metrics, ok := flagValue(args, "metrics")
		_, mport, err := net.SplitHostPort(metrics)
		if !ok || err != nil {
			t.Fatalf("--metrics=%q: the probes need it", metrics)
		}
		for _, p := range []struct {
			name  string
			probe *k8sProbe
			path  string
		}{{"readiness", c.ReadinessProbe, "/readyz"}, {"liveness", c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("no HTTP %s probe", p.name)
				continue
			}
			port, ok := c.port(p.probe.HTTPGet.Port)
			if p.probe.HTTPGet.Path != p.path || !ok || strconv.Itoa(port) != mport {
				t.Errorf("%s probe GET %s on %v, want %s on the --metrics port %s", p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path, mport)
			}
		}
		if p := w.Spec.Template.Metadata.Annotations["prometheus.io/port"]; p != "" && p != mport {
			t.Errorf("prometheus.io/port %s, but /metrics is on --metrics port %s", p, mport)
		}
		urls, _ := flagValue(args, "nats")
		for _, s := range strings.Split(urls, ",") {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatalf("--nats %q: %v", s, err)
			}
			host, _, _ := strings.Cut(u.Hostname(), ".")
			svc := services[host]
			if svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(p k8sServicePort) bool {
				return strconv.Itoa(p.Port) == u.Port()
			}) {
				t.Errorf("--nats %s: no Service %q with port %s here", s, host, u.Port())
			}
		}
	}
	if role == "edge" {
		// Kubernetes' default is 30s; the manifest should say it.
		grace := -1
		if g := w.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = *g
		}
		if time.Duration(grace)*time.Second <= stopBudget["edge"] {
			t.Errorf("terminationGracePeriodSeconds %d does not cover the edge's %s drain", grace, stopBudget["edge"])
		}
	}
}

// checkRoutes fails unless the broker's routes name exactly the pods of its
// StatefulSet through its headless Service, so that scaling the StatefulSet
// without editing the routes is caught.
func checkRoutes(t *testing.T, w *k8sObject, so *server.Options, services map[string]*k8sObject) {
	t.Helper()
	if w.Kind != "StatefulSet" || len(so.Routes) == 0 {
		t.Fatalf("brokers in Kubernetes should be a StatefulSet with routes")
	}
	var want, got []string
	for i := range w.Spec.Replicas {
		want = append(want, fmt.Sprintf("%s-%d.%s:%d", w.Metadata.Name, i, w.Spec.ServiceName, so.Cluster.Port))
	}
	for _, r := range so.Routes {
		got = append(got, r.Host)
	}
	if !slices.Equal(want, got) {
		t.Errorf("routes %v, want %v", got, want)
	}
	// The brokers only turn ready once routed to each other: their names
	// must resolve before that.
	if svc := services[w.Spec.ServiceName]; svc != nil && !svc.Spec.PublishNotReadyAddresses {
		t.Errorf("Service %s needs publishNotReadyAddresses: true for the routes to resolve at start-up", svc.Metadata.Name)
	}
}

// promqlName matches the chatd metric names in a query.
var promqlName = regexp.MustCompile(`\bchatd_[a-zA-Z0-9_:]+`)

func TestDeployGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(deployDir, "grafana", "chatd.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string            `json:"title"`
		UID    string            `json:"uid"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("chatd.json: %v", err)
	}
	if dash.Title == "" || dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatalf("chatd.json: no title, uid or panels")
	}
	ids := map[int]bool{}
	for _, raw := range dash.Panels {
		var p struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos struct{ X, W int }
			Targets []struct {
				RefID string `json:"refId"`
				Expr  string `json:"expr"`
			} `json:"targets"`
		}
		if err := json.Unmarshal(raw, &p); err != nil {
			t.Fatal(err)
		}
		if ids[p.ID] || p.Title == "" || p.GridPos.W == 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %d %q: duplicate id, no title, or outside the 24-column grid", p.ID, p.Title)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no queries", p.Title)
		}
		for _, q := range p.Targets {
			if q.RefID == "" || q.Expr == "" || !balanced(q.Expr) {
				t.Errorf("panel %q: query %q has no refId or unbalanced brackets", p.Title, q.Expr)
			}
		}
	}
	// Every string the dashboard hands Prometheus (panel queries and
	// template variables) names only metrics a real process serves.
	var all any
	_ = json.Unmarshal(data, &all)
	refs := map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		case string:
			for _, n := range promqlName.FindAllString(v, -1) {
				refs[n] = true
			}
		}
	}
	walk(all)
	p := startProc(t, nil, "all", "--metrics", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--http", "",
		"--data", t.TempDir(), "--hash-cost", "4")
	code, body := httpGet(t, "http://"+p.ready["metrics"]+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	// A series appears once something was counted, its TYPE line always.
	types := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(body, -1) {
		types[m[1]] = m[2]
	}
	for _, n := range slices.Sorted(maps.Keys(refs)) {
		typ, ok := types[n]
		if ok && typ == "histogram" {
			t.Errorf("%s is a histogram: query %s_bucket, _sum or _count", n, n)
			continue
		}
		if !ok {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(n, suffix); cut && types[base] == "histogram" {
					ok = true
				}
			}
		}
		if !ok {
			t.Errorf("the dashboard queries %s, which chatd does not serve", n)
		}
	}
	if len(refs) < 10 {
		t.Errorf("the dashboard refers to only %d chatd metrics", len(refs))
	}
}

// balanced reports whether (), [] and {} pair up in a PromQL expression,
// outside string literals.
func balanced(expr string) bool {
	var stack []byte
	inString := byte(0)
	for i := 0; i < len(expr); i++ {
		c := expr[i]
		switch {
		case inString != 0:
			if c == '\\' {
				i++
			} else if c == inString {
				inString = 0
			}
		case c == '"' || c == '\'' || c == '`':
			inString = c
		case strings.IndexByte("([{", c) >= 0:
			stack = append(stack, c)
		case strings.IndexByte(")]}", c) >= 0:
			if len(stack) == 0 || stack[len(stack)-1] != "([{"[strings.IndexByte(")]}", c)] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && inString == 0
}

// instruction is one Containerfile instruction, continuation lines joined.
type instruction struct {
	cmd, args string
	stage     int // index of the FROM it belongs to
}

// parseContainerfile reads the instructions of a Containerfile, comments
// dropped, each tagged with its build stage.
func parseContainerfile(t *testing.T, path string) []instruction {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []instruction
	stage := -1
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if s, cont := strings.CutSuffix(trimmed, `\`); cont {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, instruction{cmd, strings.TrimSpace(args), stage})
	}
	return out
}

// imageEnv reads ENV instructions, in both KEY=VALUE and "KEY VALUE" forms.
func imageEnv(t *testing.T, ins []instruction, stage int) []string {
	t.Helper()
	var env []string
	for _, in := range ins {
		if in.cmd != "ENV" || in.stage != stage {
			continue
		}
		words, err := splitWords(in.args)
		if err != nil {
			t.Fatal(err)
		}
		if len(words) > 0 && !strings.Contains(words[0], "=") {
			env = append(env, words[0]+"="+strings.Join(words[1:], " "))
			continue
		}
		env = append(env, words...)
	}
	return env
}

func TestDeployContainerfile(t *testing.T) {
	path := filepath.Join(deployDir, "container", "Containerfile")
	ins := parseContainerfile(t, path)
	last := ins[len(ins)-1].stage
	stages := map[string]int{} // stage name → index
	var finalFrom string
	var run, copyBin *instruction
	expose := map[string]bool{}
	for i := range ins {
		in := &ins[i]
		switch {
		case in.cmd == "FROM":
			f := strings.Fields(in.args)
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = in.stage
			}
			if in.stage == last {
				finalFrom = f[0]
			}
		case in.cmd == "RUN" && strings.Contains(in.args, "go build"):
			run = in
		case in.cmd == "COPY" && in.stage == last && strings.HasSuffix(in.args, " /chatd"):
			copyBin = in
		case in.cmd == "EXPOSE" && in.stage == last:
			for _, p := range strings.Fields(in.args) {
				expose[strings.TrimSuffix(p, "/tcp")] = true
			}
		case in.cmd == "USER" && in.stage == last:
			if u, _, _ := strings.Cut(in.args, ":"); u == "0" || u == "root" {
				t.Errorf("USER %s: the image must not run as root", in.args)
			}
		case in.cmd == "ENTRYPOINT" && in.stage == last:
			var ep []string
			if err := json.Unmarshal([]byte(in.args), &ep); err != nil || !slices.Equal(ep, []string{"/chatd"}) {
				t.Errorf(`ENTRYPOINT %s, want ["/chatd"] (exec form: chatd gets the signals)`, in.args)
			}
		}
	}
	if !strings.Contains(finalFrom, "distroless/static") && finalFrom != "scratch" {
		t.Errorf("final image FROM %s, want distroless static or scratch", finalFrom)
	}
	if !slices.ContainsFunc(ins, func(in instruction) bool { return in.cmd == "USER" && in.stage == last }) {
		t.Errorf("no USER in the final stage")
	}
	for _, p := range []string{"8000", "8100-8199", "9090", "4222", "6222", "7422", "8222"} {
		if !expose[p] {
			t.Errorf("EXPOSE lacks %s", p)
		}
	}
	// The image's ENV applies to every role, including a broker configured
	// by a nats-server file, which refuses the NATS variables.
	env := imageEnv(t, ins, last)
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "CHATD_") && !slices.ContainsFunc(roles, func(r string) bool { return roleVars(t, r)[k] }) {
			t.Errorf("ENV %s: no chatd role reads it", k)
		}
	}
	conf := deployFiles(t, "config", "*.conf")[0]
	for _, args := range [][]string{{"all"}, {"edge"}, {"worker"}, {"broker"}, {"broker", "--nats-config", conf}} {
		check(t, env, args...)
	}

	if run == nil {
		t.Fatal("no RUN … go build in the Containerfile")
	}
	// RUN options (--mount=…) are the builder's business, not the command's.
	cmdline := run.args
	for strings.HasPrefix(cmdline, "--") {
		_, cmdline, _ = strings.Cut(cmdline, " ")
	}
	if strings.ContainsAny(cmdline, ";&|<>`") {
		t.Fatalf("RUN %s: keep the go build alone on its RUN line, so that this test runs exactly it", cmdline)
	}
	words, err := splitWords(cmdline)
	if err != nil {
		t.Fatal(err)
	}
	var buildEnv []string
	for len(words) > 0 && regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`).MatchString(words[0]) {
		buildEnv, words = append(buildEnv, words[0]), words[1:]
	}
	if !slices.Contains(buildEnv, "CGO_ENABLED=0") {
		t.Errorf("RUN %s: without CGO_ENABLED=0 the binary may need libc, absent from the final image", cmdline)
	}
	if len(words) < 2 || words[0] != "go" || words[1] != "build" {
		t.Fatalf("RUN %s is not `go build …`", cmdline)
	}
	if copyBin == nil {
		t.Fatal("no COPY --from=… /chatd in the final stage")
	}
	out := t.TempDir()
	bin := filepath.Join(out, "chatd")
	var target string
	args := slices.Clone(words[1:])
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			target, args[i+1] = args[i+1], bin
		} else if v, ok := strings.CutPrefix(a, "-o="); ok {
			target, args[i] = v, "-o="+bin
		}
	}
	if target == "" {
		t.Fatalf("RUN %s: no -o", cmdline)
	}
	if f := strings.Fields(copyBin.args); len(f) < 3 || f[len(f)-2] != target || !strings.HasPrefix(f[0], "--from=") {
		t.Errorf("COPY %s does not copy the built %s", copyBin.args, target)
	} else if from := strings.TrimPrefix(f[0], "--from="); stages[from] != run.stage {
		t.Errorf("COPY --from=%s, but go build runs in stage %d", from, run.stage)
	}
	if testing.Short() {
		t.Skip("the static build takes a while: skipped in -short mode")
	}
	build := exec.CommandContext(t.Context(), "go", args...)
	build.Dir = repoRoot
	build.Env = append(cleanEnv(), buildEnv...)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}

	// Static: no dynamic loader to start it and no shared library to load,
	// since the final image has neither.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("the binary has a PT_INTERP program header: it needs a dynamic loader")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs %v", libs)
	}
	// The flags reached the build, rather than an ignored variable.
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	for k, want := range map[string]string{"CGO_ENABLED": "0", "-trimpath": "true"} {
		if settings[k] != want {
			t.Errorf("build setting %s=%q, want %q", k, settings[k], want)
		}
	}
	if v, err := exec.Command(bin, "version").Output(); err != nil || !strings.HasPrefix(string(v), "chatd ") {
		t.Errorf("%s version: %q %v", bin, v, err)
	}
}
