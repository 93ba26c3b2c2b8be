# nbdev 2 setup.py: every setting lives in settings.ini; edit there, not here.
# Unlike nbdev's template it imports nothing but setuptools (no pkg_resources or packaging version check: pip's build
# isolation then needs setuptools alone), its Python-version list reaches 3.14 so that min_python = 3.11 is valid, and it reads
# extras from `<name>_requirements` keys. MANIFEST.in puts settings.ini (read here) and the weights into the sdist.
from configparser import ConfigParser
import shlex
import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + 'lib_name user branch license status min_python audience language'.split()
for o in expected: assert o in cfg, f'missing expected setting: {o}'
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {'apache2': 'Apache-2.0', 'mit': 'MIT', 'bsd3': 'BSD-3-Clause'}   # SPDX expressions (PEP 639), not license classifiers
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = '3.8 3.9 3.10 3.11 3.12 3.13 3.14'.split()

min_python = cfg['min_python']
if min_python not in py_versions: raise ValueError(f'min_python must be one of {py_versions}, got {min_python}')
requirements = shlex.split(cfg.get('requirements', ''))
if cfg.get('pip_requirements'): requirements += shlex.split(cfg.get('pip_requirements', ''))
extras = {k[:-len('_requirements')]: shlex.split(v) for k, v in cfg.items() if k.endswith('_requirements') and k not in ('pip_requirements', 'conda_requirements')}
lic = licenses.get(cfg['license'].lower(), cfg['license'])

setuptools.setup(
    name=cfg['lib_name'],
    license=lic,
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    # namespace packages too, so the weights/ folder (no __init__.py) is a package of its own and setuptools does not warn about it
    packages=setuptools.find_namespace_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*'], exclude=['*__pycache__*']),
    include_package_data=True,
    package_data={cfg['lib_path']: ['weights/*.safetensors', 'weights/*.json']},
    install_requires=requirements,
    extras_require=extras,   # dev, tensorboard
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
    },
    **setup_cfg)
