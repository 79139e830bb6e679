"""transformers `custom_generate` entry point for hf_specdec (needs the hf_specdec package installed).

    model.generate(ids, custom_generate=hf_specdec.CUSTOM_GENERATE_DIR, trust_remote_code=True,
                   assistant_model=head, strategy="fspad")
"""


def generate(model, strategy="fspad", **kwargs):
    from hf_specdec.hook import specdec_generate

    return specdec_generate(model, strategy=strategy, **kwargs)
