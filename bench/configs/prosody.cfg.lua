-- Prosody for bench/compare.sh: loopback only, plaintext c2s with PLAIN allowed, no rate
-- limits (mod_limits not loaded), internal_hashed accounts with 4096 PBKDF2 iterations
-- (as Canto and ejabberd), internal (file) storage. bench/compare.sh fills in the words
-- between at-signs.
run_as_root = true  -- the script runs as root; nothing here needs root, but Prosody refuses it otherwise
daemonize = false
pidfile = "@DIR@/prosody.pid"
data_path = "@DIR@/data"
admin_socket = "@DIR@/data/prosody.sock"
interfaces = { "127.0.0.1" }
c2s_ports = { @PORT@ }
c2s_direct_tls_ports = { }
s2s_ports = { }
network_backend = "epoll"
modules_enabled = {
	"roster"; "saslauth"; "tls"; "disco"; "ping"; "version"; "time";
	"admin_shell"; -- bulk provisioning through `prosodyctl shell`
}
modules_disabled = { "s2s" }
-- mod_offline is loaded automatically.
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
default_iteration_count = 4096
storage = "internal"
certificates = "@DIR@/certs"
ssl = { certificate = "@CERT@"; key = "@KEY@"; }
log = { warn = "@DIR@/prosody.log" }

VirtualHost "localhost"
