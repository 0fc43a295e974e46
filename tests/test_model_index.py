"""The model index (model-index.yml and a metafile.yaml per config folder, OpenMMLab's
schema, what mim and mmengine's hub read) and the config folders' READMEs."""
import re

import pytest
import yaml
from helpers import ROOT
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import featup_mmseg.plugin  # noqa: F401

# every config but the shared parts under configs/_base_ (OpenMMLab's layout)
CONFIGS = sorted(path.relative_to(ROOT).as_posix() for path in (ROOT / 'configs').rglob('*.py')
                 if '_base_' not in path.parts)


def _metafiles():
    index = yaml.safe_load((ROOT / 'model-index.yml').read_text())
    return {path: yaml.safe_load((ROOT / path).read_text()) for path in index['Import']}


def _entries():
    return [(path, model) for path, meta in _metafiles().items() for model in meta['Models']]


def test_every_config_is_in_exactly_one_metafile_entry():
    listed = [model['Config'] for _, model in _entries()]
    assert sorted(listed) == CONFIGS  # each once, none missing, none extra
    folders = {path.split('/')[1] for path in CONFIGS}
    assert {path.split('/')[1] for path in _metafiles()} == folders


def test_metafiles_follow_the_schema_and_point_to_what_exists():
    load = pytest.importorskip('modelindex.load_model_index').load  # installed with mim
    assert len(load(str(ROOT / 'model-index.yml')).models) == len(CONFIGS)
    for path, meta in _metafiles().items():
        collections = {c['Name']: c for c in meta['Collections']}
        for collection in collections.values():
            assert (ROOT / collection['README']).is_file(), collection['README']
            assert collection['Paper']['URL'].startswith('https://')
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            assert model['Name'] == model['Config'].rsplit('/', 1)[1][:-3]
            assert model['Config'].startswith(path.rsplit('/', 1)[0] + '/')
            assert model['Metadata']['Architecture'] and model['Paper']['URL']
            for result in model.get('Results', []):
                # published numbers, said to be the paper's
                assert set(result) == {'Task', 'Dataset', 'Metrics'}
                source = model['Metadata']['Results Source']
                assert re.search(r'published in the \w+ paper', source), source


def test_readmes_list_every_config_of_their_folder():
    for path, meta in _metafiles().items():
        readme = (ROOT / meta['Collections'][0]['README']).read_text()
        for model in meta['Models']:
            assert f"]({model['Config'].rsplit('/', 1)[1]})" in readme, model['Name']
        assert '@inproceedings{fu2024featup' in readme and '## How to train and test' in readme


def test_configs_name_no_files_outside_the_project():
    for path in CONFIGS:
        text = (ROOT / path).read_text()
        assert not re.search(r'spec section|featup_spec|\.\./shared', text), path


@pytest.mark.parametrize('config', CONFIGS)
def test_every_metafile_config_builds(config):
    init_default_scope('mmseg')
    cfg = Config.fromfile(ROOT / config)
    cfg.model.pop('pretrained', None)
    cfg.model.backbone.pop('init_cfg', None)
    cfg.model.backbone.pop('checkpoint', None)  # TimmFeatureBackbone's weights file
    assert MODELS.build(cfg.model) is not None


def test_front_page_links_point_to_files_of_the_project():
    """The README is not part of the Sphinx build, which checks the docs' own links."""
    readme = (ROOT / 'README.md').read_text()
    targets = re.findall(r'\]\(([^)#]+)(?:#[^)]*)?\)', readme)
    local = [t for t in targets if '://' not in t]
    assert local, 'no links found'
    for target in local:
        assert (ROOT / target).exists(), target
