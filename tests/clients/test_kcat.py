"""kcat (librdkafka's command-line client) against `sluice dev`."""
import subprocess


def kcat(node, *args, input=None):
    r = subprocess.run(["kcat", "-b", node.bootstrap, *args], input=input,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_produce_creates_topic_and_consume_returns_exactly_what_was_produced(node):
    lines = [f"key{i % 5}:value number {i}" for i in range(50)]
    kcat(node, "-P", "-t", "kcat-topic", "-K:", "-H", "source=kcat", "-H", "n=1",
         input="\n".join(lines) + "\n")
    out = kcat(node, "-C", "-t", "kcat-topic", "-o", "beginning", "-e",
               "-f", "%k|%s|%h|%o\n")
    got = [l.split("|") for l in out.splitlines()]
    assert [f"{k}:{v}" for k, v, _, _ in got] == lines
    assert all(h == "source=kcat,n=1" for _, _, h, _ in got)
    assert [int(o) for *_, o in got] == list(range(50))


def test_metadata_lists_the_node_and_topics(node):
    kcat(node, "-P", "-t", "kcat-meta", input="x\n")
    out = kcat(node, "-L", "-t", "kcat-meta")
    assert "1 brokers:" in out
    assert f"broker 0 at 127.0.0.1:{node.port}" in out
    assert 'topic "kcat-meta" with 1 partitions' in out


def test_the_classic_walkthrough(node):
    # Create golang-test with 3 partitions, produce three lines, read them back.
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": node.bootstrap})
    admin.create_topics([NewTopic("golang-test", 3, 1)])["golang-test"].result(30)
    kcat(node, "-P", "-t", "golang-test", input="one\ntwo\nthree\n")
    out = kcat(node, "-C", "-t", "golang-test", "-o", "beginning", "-e", "-f", "%s\n")
    assert sorted(out.split()) == ["one", "three", "two"]
