/**
 * Real programs on the mount, compared with the same work on tmpfs: tar, git, sqlite3 (WAL), PyTorch.
 */
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { posixEnv, ok, run, sh, REPO } from '../support/mount.js';

const env = await posixEnv(t, { tmpfsMiB: 512 });
const { mnt, tmp } = env;

t.test('tar: a tree from tmpfs extracted on the mount; diff -r and tar -d find no difference', async (t) => {
  const src = path.join(tmp, 'tree');
  sh(t, `
    mkdir -p ${src}/a/b/c ${src}/empty ${src}/modes
    for i in $(seq 1 40); do head -c $((i * 37)) /dev/urandom > ${src}/a/small-$i; done
    for i in 1 2 3; do head -c $((i * 3 * 1048576 + 123)) /dev/urandom > ${src}/a/b/medium-$i; done
    echo deep > ${src}/a/b/c/leaf
    : > ${src}/a/zero
    ln -s b/c/leaf ${src}/a/link-rel
    ln -s /etc/hostname ${src}/a/link-abs
    ln -s missing ${src}/a/link-dangling
    ln ${src}/a/b/medium-1 ${src}/a/hard-1
    for m in 600 640 700 750 4755 2755 1777; do echo $m > ${src}/modes/f$m; chmod $m ${src}/modes/f$m; done
    mkdir ${src}/modes/d700 ${src}/modes/d1777 && chmod 700 ${src}/modes/d700 && chmod 1777 ${src}/modes/d1777
    chown 1234:5678 ${src}/modes/f640
    touch -d '2001-02-03 04:05:06' ${src}/a/small-1
  `, 'made the source tree on tmpfs');
  const tarball = path.join(tmp, 'tree.tar');
  ok(t, 'tar', ['-C', tmp, '-cf', tarball, 'tree'], 'tar -c on tmpfs');
  const dst = path.join(mnt, 'x');
  fs.mkdirSync(dst);
  ok(t, 'tar', ['-C', dst, '--same-owner', '-xpf', tarball], 'tar -x on the mount');
  ok(t, 'diff', ['-r', '--no-dereference', src, path.join(dst, 'tree')], 'diff -r: no difference');
  const d = run('tar', ['-C', dst, '-df', tarball]);
  t.equal(d.status, 0, 'tar -d: no difference (modes, owners, times, links, contents)', { out: d.stdout + d.stderr });
  const a = fs.statSync(path.join(dst, 'tree/a/b/medium-1'));
  const b = fs.statSync(path.join(dst, 'tree/a/hard-1'));
  t.equal(a.ino, b.ino, 'the hard link is one inode on the mount');
  t.equal(a.nlink, 2, 'nlink 2');
  t.equal(fs.readlinkSync(path.join(dst, 'tree/a/link-rel')), 'b/c/leaf', 'relative symlink target kept');
  t.equal(fs.readFileSync(path.join(dst, 'tree/a/link-rel'), 'utf8'), 'deep\n', 'and it resolves');
  t.equal(fs.statSync(path.join(dst, 'tree/modes/f4755')).mode & 0o7777, 0o4755, 'setuid mode kept');
  t.equal(fs.statSync(path.join(dst, 'tree/modes/d1777')).mode & 0o7777, 0o1777, 'sticky dir mode kept');
  t.equal(fs.statSync(path.join(dst, 'tree/modes/f640')).uid, 1234, 'owner kept');
  t.equal(fs.statSync(path.join(dst, 'tree/a/small-1')).mtime.toISOString().slice(0, 4), '2001', 'mtime kept');
  // And back again: tar the tree on the mount, extract on tmpfs, compare.
  const back = path.join(tmp, 'back');
  fs.mkdirSync(back);
  sh(t, `tar -C ${dst} -cf - tree | tar -C ${back} -xpf -`, 'tar from the mount to tmpfs');
  ok(t, 'diff', ['-r', '--no-dereference', src, path.join(back, 'tree')], 'the round trip is identical');
});

t.test('git: clone from tmpfs onto the mount, fsck --full, same log, commit on the mount', async (t) => {
  const origin = path.join(tmp, 'origin');
  const g = `git -c user.name=T -c user.email=t@example.com -c init.defaultBranch=main`;
  sh(t, `
    mkdir ${origin} && cd ${origin} && ${g} init -q
    for i in $(seq 1 12); do
      mkdir -p src/m$((i % 3)); head -c $((i * 5000)) /dev/urandom | base64 > src/m$((i % 3))/f$i.txt
      echo "line $i" >> README; ${g} add -A; ${g} commit -qm "commit $i"
    done
    ${g} tag v1; ${g} checkout -qb side; echo side > side.txt; ${g} add side.txt; ${g} commit -qm side; ${g} checkout -q main
    ${g} gc -q
  `, 'made a repository with 13 commits on tmpfs');
  const clone = path.join(mnt, 'clone');
  ok(t, 'git', ['clone', '-q', '--no-local', origin, clone], 'git clone onto the mount');
  ok(t, 'git', ['-C', clone, 'fsck', '--full', '--strict'], 'git fsck --full on the mount');
  const log = (dir: string): string => run('git', ['-C', dir, 'log', '--all', '--format=%H %P %s']).stdout;
  t.equal(log(clone), log(origin), 'git log --all is the same');
  t.equal(log(clone).trim().split('\n').length, 13, '13 commits');
  t.equal(run('git', ['-C', clone, 'status', '--porcelain']).stdout, '', 'the work tree is clean');
  sh(t, `cd ${clone} && echo more >> README && mkdir -p new && head -c 100000 /dev/urandom > new/blob && ${g} add -A && ${g} commit -qm 'on the mount' && ${g} repack -adq && ${g} gc -q`,
    'commit, repack and gc on the mount');
  ok(t, 'git', ['-C', clone, 'fsck', '--full', '--strict'], 'git fsck --full after the commit');
  t.equal(run('git', ['-C', clone, 'log', '-1', '--format=%s']).stdout.trim(), 'on the mount', 'the new commit is HEAD');
  // Clone back from the mount to tmpfs: every object readable.
  const again = path.join(tmp, 'again');
  ok(t, 'git', ['clone', '-q', '--no-local', clone, again], 'clone from the mount');
  const main = (dir: string): string => run('git', ['-C', dir, 'log', '--format=%H %s']).stdout;
  t.equal(main(again), main(clone), 'the clone of the clone has the same history');
  t.equal(main(again).trim().split('\n').length, 13, '13 commits on main (12 + the one made on the mount)');
  ok(t, 'git', ['-C', again, 'fsck', '--full'], 'git fsck --full of the clone of the clone');
});

t.test('sqlite3 (WAL): 10,000 rows in transactions, checkpoint, integrity_check ok, reopen', async (t) => {
  const db = path.join(mnt, 'db', 'test.db');
  fs.mkdirSync(path.dirname(db));
  const sql = ['PRAGMA journal_mode=WAL;', 'CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, v BLOB);'];
  for (let tx = 0; tx < 20; tx++) {
    sql.push('BEGIN;');
    for (let i = 0; i < 500; i++) {
      const id = tx * 500 + i;
      sql.push(`INSERT INTO t(name, v) VALUES('row-${id}', randomblob(${(id % 7) * 100}));`);
    }
    sql.push('COMMIT;');
  }
  sql.push("UPDATE t SET name = name || '-u' WHERE id % 10 = 0;", 'DELETE FROM t WHERE id % 100 = 1;');
  // Still in the same connection: the WAL holds every page, then a TRUNCATE checkpoint moves them to the db.
  sql.push(`.system stat -c 'wal-before %s' ${db}-wal`, 'PRAGMA wal_checkpoint(TRUNCATE);', `.system stat -c 'wal-after %s' ${db}-wal`);
  sql.unshift('PRAGMA wal_autocheckpoint=0;');
  const out = ok(t, 'sqlite3', [db], 'sqlite3 wrote 20 transactions of 500 rows and checkpointed', { input: sql.join('\n') });
  t.match(out, /^wal$/m, 'journal_mode=wal');
  const before = Number(/wal-before (\d+)/.exec(out)?.[1]);
  t.ok(before > 1 << 20, `the WAL on the mount grew to ${before} bytes`);
  t.match(out, /^0\|(\d+)\|\1$/m, 'wal_checkpoint(TRUNCATE): not busy, every frame checkpointed');
  t.match(out, /wal-after 0/, 'the WAL was truncated to 0 bytes');
  const q = (s: string): string => ok(t, 'sqlite3', [db, s], s).trim();
  t.equal(q('PRAGMA integrity_check;'), 'ok', 'integrity_check ok');
  t.equal(q('SELECT count(*) FROM t;'), '9900', '9,900 rows (10,000 minus 100 deleted)');
  t.equal(q("SELECT count(*) FROM t WHERE name LIKE '%-u';"), '1000', '1,000 updated rows (every tenth)');
  sh(t, 'echo 3 > /proc/sys/vm/drop_caches', 'caches dropped');
  // Reopen: a new process, no page cache.
  t.equal(q('PRAGMA integrity_check;'), 'ok', 'integrity_check ok after reopening');
  t.equal(q('SELECT count(*), sum(length(v)) FROM t;'), q('SELECT 9900, sum(length(v)) FROM t;'), 'rows and blob sizes read back');
  t.equal(q('PRAGMA journal_mode;'), 'wal', 'still in WAL mode');
  // The same database on tmpfs, via .dump: identical content.
  const copy = path.join(tmp, 'copy.db');
  sh(t, `sqlite3 ${db} .dump | sqlite3 ${copy}`, '.dump into a tmpfs copy');
  t.equal(ok(t, 'sqlite3', [copy, 'SELECT count(*), sum(length(v)), max(id) FROM t;'], 'query the copy').trim(),
    q('SELECT count(*), sum(length(v)), max(id) FROM t;'), 'the tmpfs copy agrees');
});

t.test('PyTorch: torch.save a state dict to the mount, torch.load, every tensor equal', async (t) => {
  const dir = path.join(mnt, 'torch');
  fs.mkdirSync(dir);
  const fixture = path.join(REPO, 'test', 'posix', 'fixtures', 'torch_roundtrip.py');
  const out = ok(t, '/usr/bin/python3', [fixture, dir], 'the round-trip script ran', { env: { ...process.env, NODE_OPTIONS: '' } });
  const r = JSON.parse(out.trim().split('\n').pop()!) as { tensors: number; bytes: number; equal: boolean; mismatched: string[] };
  t.equal(r.equal, true, `every tensor torch.equal (${r.tensors} tensors, ${r.bytes} bytes)`, { mismatched: r.mismatched });
  t.ok(r.bytes > 4 << 20, 'a checkpoint of a few MB');
  const example = path.join(REPO, 'examples', 'pytorch_checkpoint.py');
  if (fs.existsSync(example)) {
    const ex = ok(t, '/usr/bin/python3', [example, dir, '--size-mb', '16'], 'examples/pytorch_checkpoint.py --size-mb 16 exited 0');
    t.match(ex, /ok: the loaded state dict equals the saved one/, 'the example found the state dict equal');
  }
});
