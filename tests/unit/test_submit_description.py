from pathlib import Path


from modaclouds_batch.condor import submit_description as sd


def render(**overrides):
    spec = dict(
        job_id="0b0e6a3c-55a4-4c1f-9d2e-6f1c2b3a4d5e",
        instance_id="inst-1",
        owner="alice",
        name="test1",
        job_dir=Path("/tmp/jobs/x"),
        )
    spec.update(overrides)
    return sd.render_submit(sd.JobSpec(**spec))


def test_arguments_reach_the_shell_literally(tmp_path):
    import subprocess

    args = ["plain", "two words", "it's", 'say "hi"', "", "$(HOME) $$(Memory) `id` $PATH", "a\nb"]
    script = sd.arguments_script(args)
    printed = subprocess.run(
        ["sh", "-c", script + 'for a in "$@"; do printf "%s\\0" "$a"; done'],
        capture_output=True, check=True,
    ).stdout
    assert printed.split(b"\0")[:-1] == [a.encode() for a in args]


def test_no_user_text_reaches_condor_macro_expansion():
    submit = render(name="cost $$(Memory) $(HOME)")
    assert "arguments" not in submit.keys()
    assert submit.expand("My.GatewayJobName") == '"cost __(Memory) _(HOME)"'


def test_gateway_attributes_identify_the_job_in_its_ad():
    submit = render(name='we"ird')
    assert submit["My.GatewayJobId"] == '"0b0e6a3c-55a4-4c1f-9d2e-6f1c2b3a4d5e"'
    assert submit["My.GatewayInstance"] == '"inst-1"'
    assert submit["My.GatewayOwner"] == '"alice"'
    assert submit["My.GatewayJobName"] == '"we\\"ird"'


def test_input_archive_travels_only_when_given():
    assert render()["transfer_input_files"] == "arguments.sh,bundle.tar.gz"
    assert render(inputs=("bundle.tar.gz", "input.tar.gz"))["transfer_input_files"] == "arguments.sh,bundle.tar.gz,input.tar.gz"


def test_job_runs_the_packaged_launcher_from_its_own_folder():
    submit = render()
    assert submit["executable"] == str(sd.LAUNCHER)
    assert submit["initialdir"] == "/tmp/jobs/x"
    assert submit["output"] == "stdout.txt" and submit["error"] == "stderr.txt"


def test_constraint_quotes_ids_so_they_cannot_inject_expressions():
    constraint = sd.jobs_constraint("inst", ['a" || true || "'])
    assert constraint == 'GatewayInstance == "inst" && member(GatewayJobId, {"a\\" || true || \\""})'


def test_only_the_output_archive_comes_back_and_its_size_is_capped():
    submit = render(max_output_mb=2048)
    assert submit["transfer_output_files"] == "output.tar.gz"  # plus stdout/stderr, which are output/error
    assert submit["max_transfer_output_mb"] == "2048"
    assert "max_transfer_output_mb" not in render().keys()


def test_a_waiting_job_is_gated_by_its_requirements_beside_its_runtime():
    submit = render(waiting=True, runtime="python3")
    assert submit["My.GatewayWaiting"] == "true"
    assert submit["requirements"] == 'stringListMember("python3", GatewayRuntimes ?: "") && (My.GatewayWaiting =!= true)'
    plain = render()
    assert "My.GatewayWaiting" not in plain.keys() and "requirements" not in plain.keys()
